"""The tiny protocol setting the protocol tests share (teacher data, 8 workers, 12 rounds)."""

TINY = dict(
    dataset="teacher",
    workers=8,
    batch_size=8,
    rounds=12,
    hidden=(16,),
    learning_rate=0.5,
    eval_every=6,
    checkpoint_every=4,
    progress=False,
)
