// rnnlab cell viewer. Corpus text only ever reaches the page through textContent: no innerHTML,
// no string-built markup, so a text holding an HTML tag renders as those characters.
// Served mode fetches /api/*; the self-contained export embeds the same JSON in a JSON data
// block with id "rnnlab-data" and has no live sampling.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const state = { data: null, values: null, unit: null, embedded: false };

  function $(id) { return document.getElementById(id); }

  function status(msg) { $("status").textContent = msg || ""; }

  // -1 red ... 0 white ... +1 blue, as in the paper's figures; c units are shown as tanh(c).
  function rgb(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return null;
    const x = Math.max(-1, Math.min(1, v));
    const a = Math.round(255 * (1 - Math.abs(x)));
    return x < 0 ? [255, a, a] : [a, a, 255];
  }

  // WCAG 2 relative luminance of an sRGB colour.
  function luminance(c) {
    const lin = c.map((u) => {
      const s = u / 255;
      return s <= 0.04045 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  }

  // The glyph follows the background: black or white, whichever contrasts more. On this scale
  // the worse of the two is never under 4.58:1 (mid blue, where both meet), so every character
  // keeps WCAG AA's 4.5:1; the page's #222 fell to 3.9:1 on full red and 2.2:1 on full blue.
  function paint(span, v) {
    const c = rgb(v);
    if (c === null) {
      span.style.backgroundColor = "transparent";
      span.style.color = "";
      return;
    }
    const l = luminance(c);
    span.style.backgroundColor = `rgb(${c[0]},${c[1]},${c[2]})`;
    span.style.color = (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) ? "rgb(0,0,0)" : "rgb(255,255,255)";
  }

  function shown(unit, v) {
    return unit && unit.split(".")[1] === "c" ? Math.tanh(v) : v;
  }

  function visible(ch) {
    if (ch === "\n") return "\\n";
    if (ch === "\t") return "\\t";
    if (ch === " ") return "␣";
    return ch;
  }

  function renderText() {
    const box = $("text");
    box.replaceChildren();
    const text = Array.from(state.data.text);
    const frag = document.createDocumentFragment();
    text.forEach((ch, t) => {
      const span = document.createElement("span");
      span.textContent = ch;
      span.dataset.t = String(t);
      frag.appendChild(span);
    });
    box.appendChild(frag);
    $("text-note").textContent =
      `${text.length} characters from offset ${state.data.offset} (held-out part)`;
  }

  function recolour() {
    const spans = $("text").children;
    const vals = state.values;
    for (let t = 0; t < spans.length; t++) {
      paint(spans[t], vals ? shown(state.unit, vals[t]) : null);
    }
    document.querySelectorAll("button.unit").forEach((b) => {
      b.classList.toggle("chosen", b.dataset.unit === state.unit);
    });
  }

  async function chooseUnit(unit) {
    state.unit = unit;
    $("unit").value = unit;
    const embedded = state.data.activations[unit];
    if (embedded) {
      state.values = embedded;
    } else if (!state.embedded) {
      const r = await fetch(`/api/activations?cells=${encodeURIComponent(unit)}`);
      if (!r.ok) { status(`could not load ${unit}`); return; }
      state.values = (await r.json())[unit];
    } else {
      state.values = null;
    }
    recolour();
    document.body.dataset.unit = unit;
  }

  function unitButton(unit, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "unit";
    b.dataset.unit = unit;
    b.textContent = label;
    b.addEventListener("click", () => chooseUnit(unit));
    return b;
  }

  function renderFeatures() {
    const body = $("features").tBodies[0];
    body.replaceChildren();
    for (const [name, f] of Object.entries(state.data.features)) {
      const tr = document.createElement("tr");
      const th = document.createElement("td");
      th.textContent = name;
      const td = document.createElement("td");
      for (const s of f.top) {
        const acc = s.accuracy === null ? "" : ` / ${s.accuracy.toFixed(2)}`;
        const r = s.corr === null ? "–" : s.corr.toFixed(2);
        td.appendChild(unitButton(s.unit, `${s.unit} ${r}${acc}`));
      }
      tr.append(th, td);
      body.appendChild(tr);
    }
    const n = state.data.untracked.length;
    const constant = state.data.constant || [];
    $("untracked").textContent = `${n} unit(s) track no known feature (|r| < 0.2).` +
      (constant.length ? ` Constant in this text: ${constant.join(", ")}.` : "");
  }

  function renderUnitSelect() {
    const sel = $("unit");
    sel.replaceChildren();
    const units = state.embedded ? Object.keys(state.data.activations) : state.data.units;
    for (const u of units) {
      const o = document.createElement("option");
      o.value = u;
      o.textContent = u;
      sel.appendChild(o);
    }
    sel.addEventListener("change", () => chooseUnit(sel.value));
  }

  function renderSaturation() {
    const box = $("saturation");
    box.replaceChildren();
    const layers = state.data.saturation.layers || {};
    const colours = { i: "#1f77b4", f: "#d62728", o: "#2ca02c", r: "#9467bd", z: "#ff7f0e" };
    const size = 150;
    for (const [layer, gates] of Object.entries(layers)) {
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("width", size);
      svg.setAttribute("height", size);
      svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", 4);
      label.setAttribute("y", 10);
      label.textContent = `layer ${Number(layer.slice(1)) + 1}: ` + Object.keys(gates).join(" ");
      svg.appendChild(label);
      for (const [gate, fr] of Object.entries(gates)) {
        fr.left.forEach((lx, j) => {
          const c = document.createElementNS(SVG, "circle");
          c.setAttribute("cx", 5 + lx * (size - 10));
          c.setAttribute("cy", size - 5 - fr.right[j] * (size - 20));
          c.setAttribute("r", 2);
          c.setAttribute("fill", colours[gate] || "#555");
          c.setAttribute("fill-opacity", "0.6");
          svg.appendChild(c);
        });
      }
      box.appendChild(svg);
    }
    const note = document.createElement("p");
    note.textContent = Object.keys(layers).length
      ? "each dot a gate unit: x = fraction of steps left-saturated (< 0.1), " +
        "y = right-saturated (> 0.9); i blue, f red, o green, r purple, z orange"
      : "this cell has no sigmoid gates";
    box.appendChild(note);
  }

  function showTip(ev, top, loss, value) {
    const tip = $("tip");
    const lines = top.map(([ch, p]) => `${visible(ch).padEnd(3)} ${(p * 100).toFixed(1)}%`);
    if (loss !== null && loss !== undefined) lines.push(`loss ${loss.toFixed(3)} nats`);
    if (value !== null && value !== undefined) lines.push(`${state.unit} = ${value.toFixed(3)}`);
    tip.textContent = "next:\n" + lines.join("\n");
    tip.hidden = false;
    tip.style.left = `${ev.clientX + 12}px`;
    tip.style.top = `${ev.clientY + 12}px`;
  }

  function hideTip() { $("tip").hidden = true; }

  function wireHover() {
    $("text").addEventListener("mouseover", (ev) => {
      const t = ev.target.dataset && ev.target.dataset.t;
      if (t === undefined) return;
      const i = Number(t);
      const v = state.values ? state.values[i] : null;
      showTip(ev, state.data.top[i], state.data.loss[i], v);
    });
    $("text").addEventListener("mouseleave", hideTip);
    $("sample-text").addEventListener("mouseover", (ev) => {
      const span = ev.target;
      if (!span.rnnlab) return;
      showTip(ev, span.rnnlab.top, null, span.rnnlab.value);
    });
    $("sample-text").addEventListener("mouseleave", hideTip);
  }

  async function sampleLive() {
    const out = $("sample-text");
    out.replaceChildren();
    const unit = state.unit;
    const body = JSON.stringify({
      prime: $("prime").value,
      length: Number($("length").value) || 200,
      temperature: Number($("temperature").value) || 1.0,
      seed: Math.floor(Math.random() * 1e9),
      cells: unit ? [unit] : [],
    });
    const r = await fetch("/api/sample", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    if (!r.ok) { status((await r.json()).error || "sampling failed"); return; }
    status("");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const rec = JSON.parse(line);
        if (rec.error) { status(rec.error); break; }
        const span = document.createElement("span");
        span.textContent = rec.char;
        const v = unit ? rec.act[unit] : null;
        span.rnnlab = { top: rec.top, value: v };
        paint(span, v === null ? null : shown(unit, v));
        out.appendChild(span);
      }
    }
    out.dataset.done = "1";
  }

  async function load() {
    const block = $("rnnlab-data");
    if (block) {
      state.embedded = true;
      state.data = JSON.parse(block.textContent);
      $("sample-panel").hidden = true;
    } else {
      const r = await fetch("/api/analysis");
      state.data = await r.json();
      $("sample-go").addEventListener("click", () => { sampleLive(); });
    }
    const m = state.data.model || {};
    $("model").textContent = `${m.cell || ""} ${m.num_layers || ""}×${m.hidden_size || ""}`;
    renderText();
    renderUnitSelect();
    renderFeatures();
    renderSaturation();
    wireHover();
    const first = Object.keys(state.data.activations)[0];
    if (first) await chooseUnit(first);
    document.body.dataset.ready = "1";
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", load);
  } else {
    load();
  }
})();
