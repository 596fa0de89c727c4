"""Research: measuring and training models, apart from the archive jobs.

The Real-ESRGAN degradation that makes LR inputs (`degrade`, with the torch JPEG of `restoration.jpeg`),
image-quality metrics (`metrics`, NIQE's offline prior in `niqe_prior`), the training losses (`losses`)
and trainer of RefDSR's reference branch (`train`), the training set built from category folders
(`dataset`), the evaluation worker of the paper's tables (`evaluation`) and an evaluation run's checks,
plan and results (`evaluation_run`), and the scoring of any tool's outputs against ground truth
(`scoring`, `rasr metrics`). The archive jobs (enhance, index, search) import none of it at run time.
"""
