"""Defaults shared by every experiment; each config in configs/ starts from ``get_config()``.

Every choice that docs/methods.md marks [design] is a field here or in the method's block.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "run"
    config.mode = "train"  # train | pipeline | ptq | analyse | export (the table in jaxquant/modes.py)
    config.seed = 0
    config.init_from = ""  # FP run (workdir or checkpoints folder) that QAT starts from
    config.checkpoints = ""  # mode=analyse: comma-separated workdirs of trained runs

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.kwargs = ml_collections.ConfigDict()
    # float32 | bfloat16: dtype of the convs and matmuls (float32 accumulation); parameters,
    # optimiser state, BatchNorm, quantizers and curvature stay float32 (quant/layers.py)
    config.model.compute_dtype = "float32"

    config.data = ml_collections.ConfigDict()
    config.data.source = "local"  # local | tfds
    config.data.name = "digits"
    config.data.data_dir = ""
    config.data.batch_size = 64
    config.data.eval_batch_size = 256
    config.data.crop_padding = 0
    config.data.flip = False
    # > 0: that many training images (the same for every run) become a validation split;
    # evaluations during training read it, the test split is read once, at the end
    config.data.validation_images = 0

    # Group protocol (docs/methods.md §0).
    config.quant = ml_collections.ConfigDict()
    config.quant.w_bits = 4
    config.quant.a_bits = 4
    config.quant.first_last_bits = 8
    config.quant.weight_granularity = "channel"  # channel | tensor
    config.quant.act_granularity = "tensor"  # tensor | channel
    config.quant.scheme = "asymmetric"  # asymmetric | symmetric
    config.quant.init = "minmax"  # minmax | lsq
    config.quant.grad_scale = True
    # N of an input quantizer's LSQ gradient scale 1/sqrt(N·Q_P): sample (LSQ paper: the
    # features of one sample) | batch (MQBench: the whole batch tensor, B times smaller g)
    config.quant.act_grad_scale_elements = "sample"
    config.quant.calibration_images = 100

    # Post-training quantization (mode = 'ptq', docs/methods.md §5) of the FP run in init_from.
    config.ptq = ml_collections.ConfigDict()
    config.ptq.bits = "8,6,4,3"  # each b: WbAb; or "w4a8"
    config.ptq.observer = "minmax"  # minmax | percentile | mse
    config.ptq.percentile = 99.99  # percentile observer: clip above the p-th percentile (in %)
    config.ptq.mse_grid = 100  # mse observer: clip ratios 1/G, 2/G, ..., 1
    config.ptq.calibration_images = 256
    config.ptq.calibration_draw = 0  # which draw of calibration images (0: by the run's seed)
    config.ptq.bn_reestimate = True  # re-estimate the FP network's BatchNorm on clean images first

    # Integer export (mode = 'export', jaxquant/export) of the QAT or PTQ run in init_from.
    config.export = ml_collections.ConfigDict()
    config.export.bits = ""  # a PTQ run: which bit setting ("w4a4" or "4"); "" = its only one
    config.export.pack = False  # pack weight codes of at most 4 bits into bytes (2, 4 or 8 a byte)
    config.export.evaluate = True  # run the integer evaluator beside the fake-quantized one

    config.method = ml_collections.ConfigDict()
    config.method.name = "fp"
    # Baselines (docs/methods.md §1).

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"  # sgd | adam | adamw
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "cosine"  # cosine | constant
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 1
    config.train.num_steps = -1  # > 0 overrides num_epochs
    config.train.log_every = 50
    config.train.eval_every = 0  # 0: only at the end
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2
    # BatchNorm re-estimation on clean training images (jaxquant/train/batchnorm.py): after
    # calibration, before step 1 (and before an EMA teacher is copied), and after the last
    # step, before the final evaluation, checkpoint and curvature probe.
    config.train.bn_reestimate = "auto"  # auto (on for methods that quantize) | always | never
    config.train.bn_reestimate_images = 2048
    # at every log step: each loss term and its gradient-norm ratio to CE (term_*, grad_ratio_*)
    config.train.log_loss_terms = True
    # TensorBoard event files in the workdir beside metrics.jsonl (lead process only)
    config.train.tensorboard = True

    # Flatness measurements (jaxquant/curvature): mode=analyse and the training probe.
    config.curvature = ml_collections.ConfigDict()
    config.curvature.every_steps = 0  # training: Hutchinson probe every N steps (0 = off)
    config.curvature.num_probes = 10  # Hutchinson probes (analyse: the most it uses)
    config.curvature.chunk_size = 0  # probes per compiled chunk (0: 10 in a scan; 1 on CPU, jax#12868)
    config.curvature.tol = 1e-3  # analyse: stop once the running trace changes less (relative)
    config.curvature.split = "train"  # train | validation | test: where the fixed batches come from
    config.curvature.batch_size = 128
    config.curvature.num_batches = 1
    config.curvature.seed = 0  # fixes the batches, the probe vectors and the directions
    config.curvature.params = "all"  # all | steps (quantizer steps) | comma-separated layer paths
    config.curvature.top_k = 5
    config.curvature.lanczos_iterations = 64
    config.curvature.density_runs = 4
    config.curvature.density_grid_points = 512
    config.curvature.density_sigma_fraction = 0.01  # Gaussian width / spectral range
    config.curvature.landscape_points = 25  # 1D slice: points in [-radius, radius]
    config.curvature.landscape_2d_points = 13  # 2D slice: points per axis
    config.curvature.landscape_radius = 1.0
    config.curvature.line_margin = 0.25  # checkpoint line: alpha in [-margin, 1 + margin]

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all devices that mesh.model leaves
    config.mesh.model = 1  # FSDP axis: large state leaves (and the batch) split over it
    config.mesh.fsdp_min_size = 2**18  # leaves with fewer elements stay replicated

    # Multi-host start-up (jaxquant.parallel.initialize_distributed); unset fields come
    # from the launcher's environment (TPU metadata, Slurm, Open MPI).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.initialize = "auto"  # auto | always | never
    config.distributed.coordinator_address = ""  # host:port of process 0
    config.distributed.num_processes = 0  # 0: from the environment
    config.distributed.process_id = -1  # -1: from the environment
    config.distributed.initialization_timeout = 300  # seconds

    return config
