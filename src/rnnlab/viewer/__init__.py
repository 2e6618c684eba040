"""rnnlab.viewer: the cell viewer, served on 127.0.0.1 or exported as one HTML file."""

from rnnlab.viewer.html import render_html, write_html
from rnnlab.viewer.server import ViewerData, ViewerServer, static_file, viewer_data

__all__ = [
    "ViewerData",
    "ViewerServer",
    "render_html",
    "static_file",
    "viewer_data",
    "write_html",
]
