"""QK Iteration: the loss, the data, the stages.

* `loss` - the QK loss (paper eq. 1-4, `pair_loss`) and exact chunked hard-negative mining;
* `cached_side` - a constant other side's descriptors of every table row, once per phase;
  `mining` - the top-B*M against them in TensorFlow on the model's device; `first_pass` - the
  exact int8 first pass for CPUs (the evaluation's prefilter);
* `data` - what a stage iterates over: items, positives, data order; `inputs` - a side's
  model inputs for a batch of images; `forward` - a side applied to batches (head inputs,
  descriptors); `start_cache` - residual-start vectors, once;
* `precompute` - frozen-side feature tables; `describe` - per-set descriptors;
* `train` - train-q / train-k / in-batch; `steps` - one step; `distribute` - tf.distribute;
  `tensorboard` - the training log where Keras users look (``--tensorboard DIR``).
"""
