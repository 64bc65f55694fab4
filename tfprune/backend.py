"""What differs between the Keras backends, in one place.

Everything else in tfprune is written once with `keras.ops`; the few
questions whose answer depends on the backend are answered here.
"""

import keras
from keras import ops
from keras.src.backend.common.stateless_scope import in_stateless_scope


def name():
    return keras.backend.backend()


def histogram(ids, length):
    """Counts of each value of non-negative int32 `ids` in `[0, length)`.

    The length is static; ids `>= length` are not counted.

    `keras.ops.bincount` is not traceable under `jax.jit` (its output length
    depends on the values), so each backend's own bounded histogram is used.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        # The raw op takes a constant size, which XLA needs (tf.math.bincount
        # computes its length at run time).
        return tf.raw_ops.DenseBincount(
            input=ids, size=length, weights=tf.zeros([0], tf.int32), binary_output=False
        )
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.bincount(ids, length=length).astype("int32")
    if backend == "torch":
        import torch

        # Ids >= length land in a spare bin.
        clamped = torch.clamp(ids, max=length)
        if clamped.device.type != "cpu":
            return _scattered_counts(clamped, length)
        return torch.bincount(clamped, minlength=length + 1)[:length].to(torch.int32)
    return ops.cast(ops.segment_sum(ops.ones_like(ids), ids, num_segments=length), "int32")


def add_histogram(counts, ids):
    """`counts + histogram(ids, len(counts))` for ids all in `[0, len(counts))`,
    added in place where the backend can: inside a compiled loop a scatter-add
    into the carried counts, so a long histogram costs no whole-array add per
    slice.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.tensor_scatter_nd_add(counts, tf.expand_dims(ids, 1), tf.ones_like(ids))
    if backend == "jax":
        return counts.at[ids].add(1, mode="drop")
    return ops.add(counts, histogram(ids, counts.shape[0]))


def _scattered_counts(clamped, length):
    """`histogram` of PyTorch ids in `[0, length]` (`length`: not counted)
    as a scatter-add: `bincount` reads the largest id on the host, where a
    GPU would wait for it."""
    import torch

    counts = torch.zeros(length + 1, dtype=torch.int32, device=clamped.device)
    ones = torch.ones(1, dtype=torch.int32, device=clamped.device).expand(clamped.shape)
    return counts.scatter_add_(0, clamped.long(), ones)[:length]


def read(variable):
    """The current value of a Keras variable as a tensor.

    `keras.ops.convert_to_tensor` hands TensorFlow variables back as they
    are, and a few ops (`moveaxis`) do not take them.
    """
    value = variable.value
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return value


def masked(value, mask):
    """`value` where the boolean `mask` is True, else 0 (gradient: `grad * mask`).

    Each backend's fastest form, measured on CPU: on TensorFlow the raw
    same-shape `Select` (several times faster than `tf.where`, which
    broadcasts, or than casting the mask and multiplying); on PyTorch a
    multiply by the mask's bytes read as `uint8` and cast (`torch.where` and
    bool-to-float casts are 4-6x slower there); on JAX a select from a scalar
    zero (eagerly 38 us for a 784x300 weight, against 131 us with a zeros
    tensor). Stored pruned weights are zero, so the multiply and the select
    agree.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        value = tf.convert_to_tensor(value)
        return tf.raw_ops.Select(
            condition=tf.convert_to_tensor(mask), x=value, y=tf.zeros_like(value)
        )
    if backend == "torch":
        value = ops.convert_to_tensor(value)
        return value * _torch_bytes(mask).to(value.dtype)
    if backend == "jax":  # a weak-typed 0 keeps the dtype; eagerly, one op instead of two
        import jax.numpy as jnp

        return jnp.where(ops.convert_to_tensor(mask), ops.convert_to_tensor(value), 0)
    value = ops.convert_to_tensor(value)
    return ops.where(ops.convert_to_tensor(mask), value, ops.zeros_like(value))


def masked_in_place(value, mask):
    """`masked(value, mask)` for the mask constraint and `apply_mask`, which
    assign the result back to the variable `value`.

    On PyTorch on a CPU the stored tensor is multiplied in place, in slices
    of 2**18 elements: a whole-tensor temporary (the mask as floats, the
    product) is fresh memory on every call and its page faults dominate, and
    `assign` of the same tensor copies nothing (23.5M weights: 100 -> 7 ms).
    Elsewhere `masked`: on a GPU (one whole-tensor multiply) and in a
    `StatelessScope`, whose values are the caller's tensors.
    """
    if name() != "torch" or in_stateless_scope():
        return masked(value, mask)
    import torch

    tensor = ops.convert_to_tensor(value)
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        return masked(tensor, mask)
    as_bytes = _torch_bytes(mask)
    piece = 1 << 18
    with torch.no_grad():
        if tensor.numel() <= piece:
            return tensor.mul_(as_bytes.to(tensor.dtype))
        for part, keep in zip(tensor.view(-1).split(piece), as_bytes.view(-1).split(piece)):
            part.mul_(keep.to(part.dtype))
    return tensor


def increment(variable):
    """`variable.assign_add(1)`; on PyTorch in place (an eager `assign_add`
    builds a new tensor and copies it back: tens of microseconds per call,
    paid by every wrapper at every step). In a `StatelessScope` the new
    value goes to the scope, as with `assign_add`."""
    if name() != "torch" or in_stateless_scope():
        variable.assign_add(1)
        return
    import torch

    with torch.no_grad():
        variable.value.add_(1)


def _torch_bytes(mask):
    """A PyTorch bool mask read as `uint8` (a view: no copy)."""
    import torch

    return ops.convert_to_tensor(mask).view(torch.uint8)


def host_counts_steps():
    """Whether the train step runs op by op in Python (PyTorch, not compiling).

    There the host can count pruning steps in a Python int and branch on the
    schedule's NumPy answer: no device op per decision and no device-to-host
    read (a branch on a device tensor would synchronize a GPU every step).
    """
    if name() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()


def scan_slice(size):
    """Elements per slice for a whole-tensor scan of `size` elements (a
    histogram), or None to scan at once.

    On a CPU, a whole-tensor temporary (the scores, their bit patterns, the
    ids) can land in fresh memory on every call, and its page faults cost
    more than the scan: so scans go over slices in a loop. XLA (JAX, and
    TensorFlow's `fused` functions) maps every temporary afresh, so from
    2**19 elements it scans 2**18 at a time (1 MB). PyTorch reuses freed
    memory up to the C allocator's largest reused size (32 MB), so from
    2**23 elements it scans 2**19 at a time, each slice's ops dispatched
    from Python (4096x4096: 289 ms whole, 81 ms in 2**18, 70-75 ms in 2**19
    or 2**20). Accelerators scan at once.
    """
    backend = name()
    if backend == "jax":
        import jax

        on_cpu, piece, least = jax.default_backend() == "cpu", 1 << 18, 1 << 19
    elif backend == "tensorflow":
        import tensorflow as tf

        on_cpu, piece, least = not tf.config.list_logical_devices("GPU"), 1 << 18, 1 << 19
    elif backend == "torch":
        from keras.src.backend.torch.core import get_device

        on_cpu, piece, least = get_device() == "cpu", 1 << 19, 1 << 23
    else:
        return None
    return piece if on_cpu and size >= least else None


_FUSED = {}


def fused(fn):
    """`fn` compiled with XLA on TensorFlow, where the training step may not
    be (Keras leaves XLA off on CPU): its element-wise ops then run as one
    kernel instead of one each (the 4096x4096 radix select: 53 -> 42 ms).
    Inside a step compiled with XLA it is inlined. Elsewhere `fn` itself.
    """
    if name() != "tensorflow":
        return fn
    if fn not in _FUSED:
        import tensorflow as tf

        _FUSED[fn] = tf.function(fn, jit_compile=True, autograph=False)
    return _FUSED[fn]


def dynamic_shapes_allowed():
    """True where ops run eagerly (PyTorch), so boolean indexing is cheap and legal."""
    return name() == "torch"


def constraints_may_read_variables():
    """Whether a variable's constraint may read another variable (the mask).

    Under JAX `fit` the optimizer updates the weights in a stateless scope
    of their own, where another variable is not part of the step's state.
    There the masks are also updated between steps, not inside one
    (`tfprune.updater`): a mask computed inside the gradient's trace could
    not reach the optimizer.
    """
    return name() in ("tensorflow", "torch")


def traced(value):
    """Whether `value` (a tensor or variable) is being traced by `jax.jit`."""
    if name() != "jax":
        return False
    import jax

    return isinstance(ops.convert_to_tensor(value), jax.core.Tracer)


def branches_may_assign():
    """Whether a `cond` branch may assign variables.

    Not under `jax.jit`, and not in a TensorFlow replica context, where an
    assignment to a mirrored variable synchronizes replicas.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.distribute.has_strategy()
    return backend == "torch"


def step_dtype():
    """int64 as in TFMOT; int32 under JAX unless 64-bit types are enabled."""
    if name() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "int32"
    return "int64"


def attributes(owner):
    """`(name, value)` of an object's attributes; on PyTorch a layer keeps
    its sublayers in `_modules`, not in its `__dict__`."""
    items = list(vars(owner).items())
    modules = vars(owner).get("_modules")
    if isinstance(modules, dict):
        items += list(modules.items())
    return items


def compiled_updates(compute, reads, targets):
    """`update(*args) -> [(variable, new value)]` running `compute(*args)`,
    compiled once on JAX.

    Eager JAX compiles every small op it meets; a mask update outside
    training (`update_masks`) is hundreds of them. On JAX `compute` runs
    under one `jax.jit` in a `StatelessScope` over `reads` (every variable it
    reads), traced on the first call and reused while the arguments keep
    their shapes; `targets` are the variables whose new values come back
    (their current values where `compute` leaves them). Elsewhere `update`
    runs `compute` eagerly.
    """
    if name() != "jax":
        return compute
    import jax
    from keras.src.backend.common.stateless_scope import StatelessScope

    @jax.jit
    def pure(values, args):
        with StatelessScope(state_mapping=list(zip(reads, values))) as scope:
            updates = {id(v): value for v, value in compute(*args)}
            return [
                updates[id(v)] if id(v) in updates else scope.get_current_value(v)
                for v in targets
            ]

    def update(*args):
        return list(zip(targets, pure([v.value for v in reads], args)))

    return update


def pieces_by_device(variable, axes):
    """The pieces of `variable` where it is a JAX array laid out over several
    devices and split along `axes` only: `(indices, pieces, put)`, the NumPy
    pieces (one per distinct index, replicas once) and `put(new_pieces)`,
    which writes new values back to each piece's devices. None otherwise.

    Each piece is read from, and written back to, its own devices: the whole
    value is never put together in one place.
    """
    if name() != "jax":
        return None
    value = variable.value
    sharding = getattr(value, "sharding", None)
    if sharding is None or len(sharding.device_set) < 2:
        return None
    shards = value.addressable_shards
    if len(shards) != len(sharding.device_set):
        return None  # pieces on other hosts
    for shard in shards:
        for axis, part in enumerate(shard.index):
            if axis not in axes and part != slice(None):
                return None
    import jax
    import numpy as np

    keys = [tuple((part.start, part.stop) for part in shard.index) for shard in shards]
    first = {}  # one shard per distinct piece (replicas are read once)
    for key, shard in zip(keys, shards):
        first.setdefault(key, shard)
    distinct = list(first)
    indices = [first[key].index for key in distinct]
    pieces = [np.asarray(first[key].data) for key in distinct]

    def put(new_pieces):
        by_key = dict(zip(distinct, new_pieces))
        arrays = [jax.device_put(by_key[key], shard.device) for key, shard in zip(keys, shards)]
        variable.assign(jax.make_array_from_single_device_arrays(value.shape, sharding, arrays))

    return indices, pieces, put
