"""rnnlab.tasks: one short file per task on the one training loop (``rnnlab.training.loop.fit``).

Each file holds the task's config (a ``RunConfig`` with its own fields), its ``Task`` (batches,
loss, evaluation, which metric is best, extra trainer state) and its ``train_*`` entry point:
``char_lm`` (truncated BPTT over streams with carried state), ``seq2seq`` (encoder-decoder,
PER/WER), ``classify`` (many-to-one, accuracy), ``caption`` (one-to-many, BLEU/CIDEr-D) and
``dialog`` (visual dialog: ranking candidate answers with history, VisDial's R@k/MRR/NDCG).
A new task is a model file, a data file and one file here.
"""
