"""A CuPy stand-in for machines without a GPU: CuPy's rules, NumPy's arithmetic.

``build()`` reads the installed, real ``cupy`` (it imports without a GPU; only
allocating fails) and returns a module object that tinyvit can use as its
``cupy``. Its arrays hold NumPy arrays, but they behave as CuPy's do where a
GPU port usually breaks:

* **Names and signatures are the real CuPy's.** ``standin.X`` exists only if
  ``cupy.X`` does (``cupy.random.Generator`` has no ``permutation``,
  ``choice``, ``shuffle`` or ``normal``; the stand-in's has none either), and a
  call with an argument the real function does not take raises ``TypeError``.
  Signatures come from ``inspect.signature`` or, for CuPy's compiled (Cython)
  functions and methods, from the signature line that Cython embeds in their
  docstrings (``_ndarray_base.sum(self, axis=None, dtype=None, out=None,
  keepdims=False)``).
* **No implicit conversion to NumPy.** ``numpy.asarray(a)`` raises the
  ``TypeError`` of ``cupy._core.core._ndarray_base.__array__``; ``.get()``,
  ``cupy.asnumpy``, ``.item()`` and ``.tolist()`` are the ways out.
* **No host operands in device kernels.** A ufunc takes stand-in arrays,
  Python scalars and NumPy scalars (``np.float32(2)``), nothing else:
  ``cupy.add(a, numpy_array)``, ``a + numpy_array``, ``numpy_array + a`` and
  ``cupy.exp([1.0])`` raise ``TypeError: Unsupported type ...`` as in
  ``cupy/_core/_kernel.pyx`` (``_preprocess_args`` wraps every non-array in a
  ``CScalar``, which ``cupy/_core/_scalar.pyx`` refuses for anything but
  Python and NumPy scalars). Other functions refuse NumPy arrays too, except
  the conversions (``array``, ``asarray``, ``asanyarray``, ``asnumpy``).
  This is stricter than CuPy for the few Python wrappers that forward to a
  method of their argument (``cupy.sum(numpy_array)`` calls
  ``numpy_array.sum()`` and so silently computes on the host): on a GPU that
  is a device mix-up too, and the stand-in names it.
* **Reductions are 0-d device arrays** (``a.sum()`` is a stand-in array, not a
  NumPy scalar), and so is an element ``a[0, 1]`` (a 0-d view, as in CuPy).
* **Views are views**: slices, reshapes, transposes and ``.T`` share memory
  with their array and write through; ``.base`` is the array that owns the
  memory (``None`` for an owner), as ``_ndarray_base._view`` sets it.
* **Setting items** follows ``cupy/_core/_routines_indexing.pyx``: list and
  NumPy index arrays are copied to the device; with a basic index a NumPy
  value goes through ``fill``, which refuses anything but a 0-d array
  (``ValueError: non-scalar numpy.ndarray cannot be used for fill``); with an
  integer-array index it is copied to the device. ``scatter_add`` takes only
  int32, float16, float32, float64, uint32 and uint64.
* **Index arrays wrap around**: an out-of-bounds integer index array is no
  error on a GPU (``_take_kernel``: ``indices % index_range``; the same in
  ``take`` and the scatters), only a scalar index is checked.
* **Random numbers** come from NumPy's Philox generator, not its default
  PCG64, so a seed gives different numbers on the "GPU" than on the CPU, as
  CuPy's XORWOW does: a test that expects equal streams across devices fails.

Counters (``counting()``) record what the code in their block would cost on a
GPU. The launch count is an estimate, one per kernel CuPy would run:

* 1 per ufunc call (each arithmetic operator, in-place ones too), reduction
  (``sum, mean, max, min, argmax, ...``; ``var`` and ``std`` 2),
  matrix product or other BLAS/cuSOLVER call (``matmul, dot, einsum,
  linalg.*``, plus 1 per operand that is neither C- nor F-contiguous, which
  CuPy copies first), gather (integer-array indexing, ``take``), scatter or
  copy into an array (``a[i] = v``), ``astype`` (0 when it returns the array
  itself), ``copy``, ``fill``, ``zeros/ones/full/arange/eye`` and their
  ``_like`` forms (a memset or fill kernel), each random draw;
* 2 for a boolean-mask index (a scan, then the gather or scatter);
* 0 for ``empty``/``empty_like`` (allocation only), for views (slices,
  ``reshape`` without a copy, ``transpose``, ``swapaxes``, ``T``,
  ``broadcast_to``, ``expand_dims``, ``squeeze``), and for transfers (copies
  between host and device use the copy engine, not a kernel);
* any other function: 1 if its result owns new memory, 0 if it is a view.

``syncs`` counts the times the host waits for the device: ``.get()``,
``cupy.asnumpy``, ``.item()``, ``.tolist()``, ``float/int/bool/complex`` of an
array, ``repr``/``str``/``format``, ``Device().synchronize()``,
``Stream.synchronize()``, ``runtime.deviceSynchronize()``, printing with
``numpy.array2string`` and its kin, and the implicit
ones CuPy marks "synchronize!": boolean-mask indexing, ``nonzero``,
``argwhere``, ``flatnonzero``, ``compress``, one-argument ``where``,
``unique`` (the size of the result has to come back to the host first).
``device_to_host`` counts the copies in those (a mask's count is one);
``host_to_device`` counts ``asarray``/``array`` of host data, host index
arrays, host values in ``a[i] = v`` or ``scatter_add``, and ``ndarray.set``.
Inside ``cupyx.allow_synchronize(False)`` a synchronization raises the real
``cupyx.DeviceSynchronized``, as CuPy's ``syncdetect`` does.

``nudge_ulps(k)`` models CUDA's float32 maths library, which the CUDA C
Programming Guide (appendix "Mathematical Functions", single precision)
documents as up to 1 ulp off for ``logf, log1pf, expm1f`` and 2 for
``expf, tanhf, sinf, cosf, erff`` (4 for ``powf``): inside it, the float32
results of ``exp, exp2, expm1, log, log2, log10, log1p, tanh, sqrt, sin,
cos`` and ``power`` with a non-integer exponent move by exactly ``k`` ulp per
element (``numpy.nextafter`` ``k`` times), up or down as a hash of the input
decides: deterministic, as CUDA's functions are, so the same input always
gives the same bits. Zeros, infinities and NaNs stay; no result leaves its
function's range (``tanh``, ``sin``, ``cos`` in [-1, 1], ``expm1`` >= -1) or
moves off its ends (``tanh(30)`` stays 1, ``expm1(-30)`` stays -1). CUDA's
``sqrtf`` is correctly rounded by default, so nudging ``sqrt`` is
deliberately pessimistic; pass ``functions=`` to choose.

``install()`` makes ``tinyvit.backend`` use the stand-in, through
``backend.use_cupy(standin_cupy, standin_cupyx)`` (``cuda_available``,
``is_cuda_array``, ``xp_of`` and ``scatter_add`` read the module-level
``cupy`` and ``cupyx`` it sets); ``sys.modules`` is left alone.
``uninstall()`` undoes it; installs nest. ``tests/conftest.py`` installs it
for the whole suite when CuPy is installed but finds no GPU, and
``tests/run_with_standin.py`` runs a lesson or ``-m tinyvit.train`` on it.

``cupyx.scipy.special`` offers ``erf``, ``erfc`` and ``ndtr`` (the normal
CDF), which NumPy lacks: computed in float64 with Python's ``math`` and
rounded to the input's float type, and nudged like the functions above
(CUDA documents 2, 4 and 5 ulp for ``erff``, ``erfcf`` and ``normcdff``).

Sources read (CuPy 14.2.0; the wheel ships only compiled modules, so the
``.pyx`` sources are those of the cupy/cupy repository, checked against the
signatures embedded in the installed ``cupy/_core/core.cpython-311-*.so`` and
the messages in its string table): ``cupy/_core/core.pyx`` (``__array__``,
``__array_ufunc__``, ``__array_function__``, ``_should_use_rop``, the
operators, ``fill``, ``item``, ``get``, ``__repr__``, ``_view``),
``cupy/_core/_kernel.pyx`` (``ufunc.__call__``: keywords ``out``, ``dtype``,
``casting``, ``_where``; ``reduce``/``accumulate``/``at`` only for add and
multiply), ``cupy/_core/_scalar.pyx``, ``cupy/_core/_routines_indexing.pyx``,
and the installed Python files ``cupy/__init__.py`` (``asnumpy``,
``get_array_module``) and ``cupy/_creation/from_data.py``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import sys
import threading
import types
import zlib

import numpy as np

# ---------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------


class Counts:
    """What a block of code would cost on a GPU: see the module docstring for the rules."""

    __slots__ = ("launches", "syncs", "host_to_device", "device_to_host")

    def __init__(self):
        self.launches = self.syncs = self.host_to_device = self.device_to_host = 0

    def __repr__(self):
        return (
            f"Counts(launches={self.launches}, syncs={self.syncs}, "
            f"host_to_device={self.host_to_device}, device_to_host={self.device_to_host})"
        )


_active: list[Counts] = []
_lock = threading.Lock()
_sync_allowed = [True]  # cupyx.allow_synchronize: the innermost setting wins


def _count(launches=0, syncs=0, host_to_device=0, device_to_host=0):
    if syncs and not _sync_allowed[-1]:
        import cupyx  # the real one: its exception type is what CuPy raises

        raise cupyx.DeviceSynchronized()
    with _lock:
        for c in _active:
            c.launches += launches
            c.syncs += syncs
            c.host_to_device += host_to_device
            c.device_to_host += device_to_host


def _sync_copy():
    """One device-to-host copy the host waits for (``get``, ``item``, ``float``...)."""
    _count(syncs=1, device_to_host=1)


@contextlib.contextmanager
def counting():
    """``with counting() as c:`` ... then ``c.launches``, ``c.syncs`` and the copies."""
    counts = Counts()
    with _lock:
        _active.append(counts)
    try:
        yield counts
    finally:
        with _lock:
            _active.remove(counts)


# ---------------------------------------------------------------------------
# ULP nudging of float32 transcendental functions
# ---------------------------------------------------------------------------

NUDGED = frozenset(
    {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "sqrt", "sin", "cos", "power"}
    | {"erf", "erfc", "ndtr"}  # cupyx.scipy.special: CUDA's erff, erfcf, normcdff
)
_nudge: list[tuple] = []  # (ulps, seed, function names); the last one applies


@contextlib.contextmanager
def nudge_ulps(ulps, seed=0, functions=NUDGED):
    """Inside, float32 results of ``functions`` move by ``ulps`` ulp, up or down.

    The direction is a hash of the function, the input values and ``seed``:
    like CUDA's ``expf``, a nudged ``exp`` gives the same bits for the same
    input every time, so two code paths that compute the same thing still
    agree exactly, and rounding differences are only between CPU and GPU.
    """
    _nudge.append((int(ulps), int(seed), frozenset(functions)))
    try:
        yield
    finally:
        _nudge.pop()


def _direction_up(name, inputs, shape, seed):
    """Per element, True to move up: a hash of the inputs' float32 bits (and name, seed)."""
    h = np.full(shape, zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1), dtype=np.uint64)
    for x in inputs:
        bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        h = ((h ^ np.broadcast_to(bits, shape)) * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
    return ((h * 0xC2B2AE35) & 0xFFFFFFFF) >> 31 == 1


# CUDA keeps these within their mathematical range, and saturates exactly onto its ends
# (tanhf(30) is 1, expm1f(-30) is -1): results there are not moved.
_RANGES = {"expm1": (-1.0, np.inf), "tanh": (-1.0, 1.0), "sin": (-1.0, 1.0), "cos": (-1.0, 1.0)}
_RANGES.update({"erf": (-1.0, 1.0), "erfc": (0.0, 2.0), "ndtr": (0.0, 1.0)})


def _nudge_plan(name, inputs):
    """Before a ufunc runs (``out=`` may overwrite its input): where its results move, or None."""
    if not _nudge:
        return None
    ulps, seed, functions = _nudge[-1]
    if ulps == 0 or name not in functions:
        return None
    shape = np.broadcast_shapes(*(np.shape(x) for x in inputs))
    return ulps, _direction_up(name, inputs, shape, seed)


def _apply_nudge(name, plan, result, inputs):
    """Move each finite, nonzero float32 element of ``result`` (in place) by k ulp."""
    if plan is None or not isinstance(result, np.ndarray) or result.dtype != np.float32:
        return
    ulps, up = plan
    movable = np.isfinite(result) & (result != 0)
    if name == "power":  # integer exponents are exact on the GPU too (repeated products)
        exponent = np.asarray(inputs[1])
        movable &= np.broadcast_to(np.mod(exponent, 1) != 0, result.shape)
    toward = np.where(up, np.float32(np.inf), np.float32(-np.inf))
    moved = result.copy()
    for _ in range(ulps):
        moved = np.nextafter(moved, toward)
    low, high = _RANGES.get(name, (-np.inf, np.inf))
    movable &= (result != low) & (result != high)  # a saturated result is exact
    movable &= np.isfinite(moved) & (moved >= low) & (moved <= high)
    result[...] = np.where(movable, moved, result)


# ---------------------------------------------------------------------------
# Signatures of the real CuPy
# ---------------------------------------------------------------------------

_SIGNATURE_LINE = re.compile(r"^\s*[\w.]*\((.*)\)\s*(->.*)?$")
_PARAMETER = re.compile(r"^(?:[A-Za-z_][\w.]*\s+)?(\*{0,2}[A-Za-z_]\w*)\s*(?::[^=]*)?(=.*)?$")


def _split_parameters(text):
    """Split ``a, b=(1, 2), *, c='x,y'`` at the commas that separate parameters."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


class _Default(str):
    """A default value as the docstring spells it, shown unquoted in signatures."""

    def __repr__(self):
        return str(self)


def _docstring_signature(obj):
    """The signature Cython embeds as the first docstring line, or None.

    Cython's typed parameters (``int axis=-1``, ``_ndarray_base b``) lose their
    type; defaults are not evaluated (only which names exist matters here).
    """
    doc = (getattr(obj, "__doc__", None) or "").strip()
    match = _SIGNATURE_LINE.match(doc.splitlines()[0] if doc else "")
    if match is None:
        return None
    params, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for piece in _split_parameters(match.group(1).replace("\\", "")):
        if piece == "/":
            params = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in params]
            continue
        if piece == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        found = _PARAMETER.match(piece)
        if found is None:
            return None
        name, default = found.group(1), found.group(2)
        if name.startswith("**"):
            params.append(inspect.Parameter(name[2:], inspect.Parameter.VAR_KEYWORD))
        elif name.startswith("*"):
            params.append(inspect.Parameter(name[1:], inspect.Parameter.VAR_POSITIONAL))
            kind = inspect.Parameter.KEYWORD_ONLY
        else:
            extra = {} if default is None else {"default": _Default(default[1:].strip())}
            params.append(inspect.Parameter(name, kind, **extra))
    if params and params[0].name == "self":
        params = params[1:]
    try:
        return inspect.Signature(params)
    except ValueError:  # e.g. a default before a required parameter in a hand-written line
        return None


def signature_of(obj):
    """The call signature of a real CuPy function or method (without ``self``), or None."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return _docstring_signature(obj)
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        sig = sig.replace(parameters=params[1:])
    if list(sig.parameters) == ["args", "kwargs"]:  # a bare (*args, **kwargs) wrapper says nothing
        return _docstring_signature(obj) or sig
    return sig


def _check_call(sig, name, args, kwargs):
    """Raise ``TypeError`` when the real CuPy would not accept these arguments."""
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}(): {e} (the real CuPy's signature is {name}{sig})") from None


# ---------------------------------------------------------------------------
# Moving between stand-in arrays and the NumPy arrays inside them
# ---------------------------------------------------------------------------

_PYTHON_SCALARS = (int, float, bool, complex)


def _is_scalar(x):
    """The scalars CuPy passes to kernels (``_scalar.pyx``): Python and NumPy scalars."""
    return type(x) in _PYTHON_SCALARS or isinstance(x, np.generic)


def _refuse_host_array(x, where):
    raise TypeError(
        f"Unsupported type {type(x)} in {where}: a NumPy array is host memory, and CuPy "
        "will not copy it to the device implicitly (use cupy.asarray first)"
    )


def _unwrap(x, where):
    """The NumPy array inside a stand-in array, recursively in lists and tuples.

    NumPy arrays are refused: see the module docstring.
    """
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        _refuse_host_array(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(item, where) for item in x)
    return x


def _arrays_in(values):
    """Every stand-in array in ``values`` (a flat walk into lists, tuples and dicts)."""
    found = []
    for v in values:
        if isinstance(v, ndarray):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(_arrays_in(v))
        elif isinstance(v, dict):
            found.extend(_arrays_in(v.values()))
    return found


def _wrap(a, sources=()):
    """A stand-in array around NumPy array ``a``; a view of one of ``sources`` records its base."""
    out = ndarray.__new__(ndarray)
    out._a, out._owner = a, None
    if a.base is not None:
        for s in sources:
            if np.may_share_memory(a, s._a):
                out._owner = s if s._owner is None else s._owner
                break
    return out


class _Boxer:
    """Turns NumPy results back into stand-in arrays and counts the launch they took."""

    def __init__(self, sources):
        self.sources = sources
        self.by_id = {id(s._a): s for s in sources}
        self.fresh = False

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            if id(x) in self.by_id:  # an input (or out=) handed back as it is
                return self.by_id[id(x)]
            boxed = _wrap(x, self.sources)
            self.fresh = self.fresh or boxed._owner is None
            return boxed
        if isinstance(x, np.generic):  # CuPy never returns a host scalar from device data
            self.fresh = True
            return _wrap(np.asarray(x))
        if isinstance(x, tuple):
            return tuple(self(item) for item in x)
        if isinstance(x, list):
            return [self(item) for item in x]
        return x


def _box(result, sources, launches=None):
    """Box ``result``; count ``launches`` (default: 1 if it owns new memory, else 0)."""
    boxer = _Boxer(sources)
    boxed = boxer(result)
    _count(launches=int(boxer.fresh) if launches is None else launches)
    return boxed


def _host_index(key, shape):
    """``key`` for NumPy, with stand-in arrays unwrapped and host index arrays counted.

    Returns ``(key, kind)``, kind ``"basic"``, ``"integer"`` or ``"mask"``. An
    Ellipsis is appended, as ``_view_getitem`` does, so that an all-integer
    index gives a 0-d view rather than a NumPy scalar. Integer index arrays
    wrap around (``_take_kernel``: ``indices % index_range``): an
    out-of-bounds index is no error on the GPU, only a scalar one is.
    """
    items = list(key) if isinstance(key, tuple) else [key]
    arrays = masks = 0
    for i, s in enumerate(items):
        if s is None or s is Ellipsis or isinstance(s, slice):
            continue
        if isinstance(s, ndarray):
            items[i] = s._a
        elif isinstance(s, (list, tuple, np.ndarray)):  # copied to the device first
            _count(host_to_device=1)
            items[i] = np.asarray(s)
            if isinstance(s, (list, tuple)) and items[i].size == 0:
                items[i] = items[i].astype(np.int32)  # an empty list means no indices
        else:
            continue  # an integer (or something NumPy will refuse)
        arrays += 1
        masks += items[i].dtype == np.bool_
    if not any(s is Ellipsis for s in items):
        items.append(Ellipsis)
    if arrays > masks:
        _wrap_around(items, shape)
    return tuple(items), "mask" if masks else "integer" if arrays else "basic"


def _axes_taken(s):
    if s is None or s is Ellipsis:
        return 0
    return s.ndim if isinstance(s, np.ndarray) and s.dtype == np.bool_ else 1


def _wrap_around(items, shape):
    """Replace each integer index array by itself modulo the length of its axis."""
    axis, spread = 0, len(shape) - sum(_axes_taken(s) for s in items)
    for i, s in enumerate(items):
        if s is Ellipsis:
            axis += spread
            continue
        if isinstance(s, np.ndarray) and s.dtype.kind in "iu" and 0 <= axis < len(shape):
            if shape[axis] > 0:
                items[i] = np.mod(s, shape[axis])
        axis += _axes_taken(s)


def _count_mask(kind):
    """A boolean mask: a scan kernel, then its count comes back to the host."""
    if kind == "mask":
        _count(launches=1)
        _sync_copy()


# ---------------------------------------------------------------------------
# The array
# ---------------------------------------------------------------------------


class Flags:
    """``cupy._core.flags.Flags``: ``c_contiguous``, ``f_contiguous``, ``owndata`` only."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, c_contiguous, f_contiguous, owndata):
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, name):
        keys = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous"}
        return getattr(self, keys.get(name, name.lower()))

    def __repr__(self):
        names = ("c_contiguous", "f_contiguous", "owndata")
        return "\n".join(f"  {k.upper()} : {getattr(self, k)}" for k in names)


def _should_use_rop(x, y):
    """``core.pyx``: defer to ``y``'s reflected operator when ``y`` opts out of ufuncs."""
    try:
        y_ufunc = y.__array_ufunc__
    except AttributeError:
        return getattr(x, "__array_priority__", 0) < getattr(y, "__array_priority__", 0)
    return y_ufunc is None


def _binary(name, reflected=False):
    """``x op y`` as ``core.pyx`` defines it: a device ``y`` runs the ufunc at once;
    otherwise ``numpy.<ufunc>`` is called so every operand's ``__array_ufunc__`` is tried."""

    def op(self, other):
        x, y = (other, self) if reflected else (self, other)
        if isinstance(other, ndarray):
            return _module_ufunc(name)(x, y)
        if _should_use_rop(self, other):
            return NotImplemented
        return getattr(np, name)(x, y)

    op.__name__ = f"__{'r' if reflected else ''}{name}__"
    return op


def _inplace(name):
    def op(self, other):  # core.pyx: _math._add(self, other, self)
        return _module_ufunc(name)(self, other, out=self)

    return op


def _compare(name):
    def op(self, other):
        if isinstance(other, ndarray):
            return _module_ufunc(name)(self, other)
        if _should_use_rop(self, other):
            return NotImplemented
        if isinstance(other, np.ndarray) and other.ndim == 0:
            other = other.item()  # core.pyx's workaround for numpy/numpy#12142
        return getattr(np, name)(self, other)

    return op


class ndarray:
    """A CuPy array that lives in host memory: CuPy's interface, NumPy's values.

    ``ndarray(shape, dtype=float, memptr=None, strides=None, order='C')``
    allocates uninitialized memory, as ``cupy.ndarray`` does; the stand-in has
    no device pointers, so ``memptr`` and ``strides`` are refused.
    """

    __slots__ = ("_a", "_owner", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise ValueError("the CuPy stand-in has no device memory pointers (memptr, strides)")
        self._a = np.empty(shape, dtype=dtype, order=order)
        self._owner = None

    # -- attributes ---------------------------------------------------------

    shape = property(lambda self: self._a.shape)

    @shape.setter
    def shape(self, value):  # in place, without a copy (CuPy raises when one is needed)
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    base = property(lambda self: self._owner)

    @property
    def flags(self):
        f = self._a.flags
        return Flags(f.c_contiguous, f.f_contiguous, self._owner is None)

    @property
    def T(self):  # core.pyx: ndim < 2 is the array itself
        return self if self.ndim < 2 else _wrap(self._a.T, (self,))

    @property
    def mT(self):
        return _wrap(self._a.mT, (self,))

    @property
    def real(self):
        return _wrap(self._a.real, (self,))

    @property
    def imag(self):
        return _box(self._a.imag, (self,))

    @property
    def device(self):
        return _cuda_namespace().Device(0)

    # -- conversion: every way to the host is a synchronizing copy -------------

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A NumPy copy: one device-to-host copy, synchronous unless ``blocking=False``."""
        _count(device_to_host=1, syncs=int(bool(blocking)))
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.dtype != self.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if out.shape != self.shape:
                raise ValueError(
                    f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}"
                )
            out[...] = self._a
            return out
        return np.array(self._a, order=order.upper(), copy=True)

    def set(self, arr, stream=None):
        """Copy host array ``arr`` in (``core.pyx``: same dtype and shape required)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        _count(host_to_device=1)
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        _sync_copy()
        return self._a.item()

    def tolist(self):
        _sync_copy()
        return self._a.tolist()

    def tobytes(self, order="C"):
        _sync_copy()
        return self._a.tobytes(order)

    def tofile(self, fid, sep="", format="%s"):
        _sync_copy()
        self._a.tofile(fid, sep, format)

    def __float__(self):
        _sync_copy()
        return float(self._a)

    def __int__(self):
        _sync_copy()
        return int(self._a)

    def __complex__(self):
        _sync_copy()
        return complex(self._a)

    def __bool__(self):
        if self.size == 1:
            _sync_copy()
        return bool(self._a)

    def __repr__(self):
        _sync_copy()
        return repr(self._a)

    def __str__(self):
        _sync_copy()
        return str(self._a)

    def __format__(self, format_spec):
        _sync_copy()
        return format(self._a, format_spec)

    def __reduce__(self):  # core.pyx: pickles through a host copy
        return _unpickle, (self.get(),)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # -- container ----------------------------------------------------------

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._a.shape[0]

    def __iter__(self):  # core.pyx: device views, one per row
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __getitem__(self, key):
        index, kind = _host_index(key, self.shape)
        _count_mask(kind)
        return _box(self._a[index], (self,), launches=0 if kind == "basic" else 1)

    def __setitem__(self, key, value):
        index, kind = _host_index(key, self.shape)
        _count_mask(kind)
        if isinstance(value, ndarray):
            value = value._a
        elif kind == "basic" and not _is_scalar(value):  # goes through fill()
            if not isinstance(value, np.ndarray):
                raise TypeError(f"Unsupported type {type(value)}")
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        elif not _is_scalar(value):  # advanced index: core.array(value) copies it over
            _count(host_to_device=1)
        _count(launches=1)
        self._a[index] = value

    def __delitem__(self, key):
        raise ValueError("cannot delete array elements")

    # -- NumPy interoperability, as core.pyx -------------------------------

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy ufuncs on stand-in arrays run the stand-in's ufunc of the same name.

        Only ``method == "__call__"``; ``np.add.at`` or ``np.add.reduce`` on a
        CuPy array return NotImplemented (NumPy raises TypeError). NumPy
        arrays among the operands go on to the ufunc, which refuses them.
        """
        inout = inputs
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            inout += out
            kwargs["out"] = out[0]
        if method != "__call__":
            return NotImplemented
        name = ufunc.__name__
        if not hasattr(_real(), name):
            return NotImplemented
        for x in inout:
            if not (isinstance(x, (ndarray, np.ndarray)) or _is_scalar(x)):
                return NotImplemented
        if name in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            inputs = tuple(
                x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs
            )
        return getattr(_module(), name)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """``numpy.f(a)`` runs ``cupy.f`` when CuPy has its own f (looked up by module path)."""
        try:
            module = functools.reduce(getattr, func.__module__.split(".")[1:], _module())
            cupy_func = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if cupy_func is func:
            return NotImplemented
        if any(t not in (ndarray, np.ndarray) for t in types):
            return NotImplemented
        return cupy_func(*args, **kwargs)

    # -- operators ------------------------------------------------------------

    __add__, __radd__, __iadd__ = _binary("add"), _binary("add", True), _inplace("add")
    __sub__, __rsub__ = _binary("subtract"), _binary("subtract", True)
    __isub__ = _inplace("subtract")
    __mul__, __rmul__ = _binary("multiply"), _binary("multiply", True)
    __imul__ = _inplace("multiply")
    __truediv__, __rtruediv__ = _binary("true_divide"), _binary("true_divide", True)
    __itruediv__ = _inplace("true_divide")
    __div__, __idiv__ = __truediv__, __itruediv__
    __floordiv__, __rfloordiv__ = _binary("floor_divide"), _binary("floor_divide", True)
    __ifloordiv__ = _inplace("floor_divide")
    __mod__, __rmod__, __imod__ = (
        _binary("remainder"),
        _binary("remainder", True),
        _inplace("remainder"),
    )
    __divmod__, __rdivmod__ = _binary("divmod"), _binary("divmod", True)
    __pow__, __rpow__, __ipow__ = _binary("power"), _binary("power", True), _inplace("power")
    __lshift__, __rlshift__ = _binary("left_shift"), _binary("left_shift", True)
    __ilshift__ = _inplace("left_shift")
    __rshift__, __rrshift__ = _binary("right_shift"), _binary("right_shift", True)
    __irshift__ = _inplace("right_shift")
    __and__, __rand__, __iand__ = (
        _binary("bitwise_and"),
        _binary("bitwise_and", True),
        _inplace("bitwise_and"),
    )
    __or__, __ror__, __ior__ = (
        _binary("bitwise_or"),
        _binary("bitwise_or", True),
        _inplace("bitwise_or"),
    )
    __xor__, __rxor__, __ixor__ = (
        _binary("bitwise_xor"),
        _binary("bitwise_xor", True),
        _inplace("bitwise_xor"),
    )
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __lt__, __le__ = _compare("less"), _compare("less_equal")
    __eq__, __ne__ = _compare("equal"), _compare("not_equal")
    __gt__, __ge__ = _compare("greater"), _compare("greater_equal")

    def __neg__(self):
        return _module_ufunc("negative")(self)

    def __pos__(self):  # core.pyx: +a is a itself
        return self

    def __abs__(self):
        return _module_ufunc("absolute")(self)

    def __invert__(self):
        return _module_ufunc("invert")(self)

    # -- methods whose costs or rules differ from the generic ones ----------

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if subok is not None:
            raise TypeError("subok is not supported yet")
        return _box(self._a.astype(dtype, order=order, copy=copy), (self,))

    def copy(self, order="C"):
        return _box(self._a.copy(order=order), (self,), launches=1)

    def fill(self, value):
        """``core.pyx``: a scalar only (a 0-d array is one); a memset or one fill kernel."""
        if isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            value = value._a
        elif isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        elif not _is_scalar(value):
            raise TypeError(f"Unsupported type {type(value)}")
        _count(launches=1)
        self._a.fill(value)

    def nonzero(self):  # "This function may synchronize the device."
        _count(launches=1)
        _sync_copy()
        return _box(self._a.nonzero(), (self,))

    def compress(self, condition, axis=None, out=None):
        _count(launches=1)
        _sync_copy()
        condition = condition._a if isinstance(condition, ndarray) else np.asarray(condition)
        return _box(self._a.compress(condition, axis, _unwrap(out, "compress")), (self,))

    def _scatter(self, op, slices, value):
        """``_scatter_op`` for ``scatter_add/max/min``: atomics, repeated indices combine."""
        index, kind = _host_index(slices, self.shape)
        _count_mask(kind)
        if isinstance(value, ndarray):
            value = value._a
        elif not _is_scalar(value):
            _count(host_to_device=1)
            value = np.asarray(value)
        value = np.asarray(value).astype(self.dtype, copy=False)
        allowed = [np.int32, np.float16, np.float32, np.float64, np.uint32, np.uint64]
        if op != "add":
            allowed.remove(np.float16)
        if kind == "integer" and value.dtype.type not in allowed:
            names = ", ".join(np.dtype(t).name for t in allowed)
            raise TypeError(f"scatter_{op} only supports {names} as data type")
        _count(launches=1)
        ufunc = {"add": np.add, "max": np.maximum, "min": np.minimum}[op]
        ufunc.at(self._a, index, value)

    def scatter_add(self, slices, value):
        self._scatter("add", slices, value)

    def scatter_max(self, slices, value):
        self._scatter("max", slices, value)

    def scatter_min(self, slices, value):
        self._scatter("min", slices, value)

    def take(self, indices, axis=None, out=None):  # out-of-bounds indices wrap around
        indices = indices._a if isinstance(indices, ndarray) else _host_indices(indices)
        out_a = None if out is None else out._a
        result = self._a.take(indices, axis=axis, out=out_a, mode="wrap")
        return _box(result, (self,) if out is None else (self, out), launches=1)

    def argsort(self, axis=-1, kind=None):  # CuPy sorts stably
        return _box(self._a.argsort(axis=axis, kind="stable"), (self,))

    def sort(self, axis=-1, kind=None):
        _count(launches=1)
        self._a.sort(axis=axis, kind="stable")

    def put(self, indices, values, mode="wrap"):  # CuPy's default mode is 'wrap'
        indices = indices._a if isinstance(indices, ndarray) else _host_indices(indices)
        if isinstance(values, ndarray):
            values = values._a
        elif not _is_scalar(values):  # core.array(values): copied over
            _count(host_to_device=1)
        _count(launches=1)
        self._a.put(indices, values, mode=mode)

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        result = self._a.argmax(axis=axis, keepdims=keepdims)
        result = result if dtype is None else np.asarray(result).astype(dtype)
        return self._reduce_into(result, out)

    def argmin(self, axis=None, out=None, dtype=None, keepdims=False):
        result = self._a.argmin(axis=axis, keepdims=keepdims)
        result = result if dtype is None else np.asarray(result).astype(dtype)
        return self._reduce_into(result, out)

    def ptp(self, axis=None, out=None, keepdims=False):
        return self._reduce_into(np.ptp(self._a, axis=axis, keepdims=keepdims), out)

    def _reduce_into(self, result, out):
        if out is None:
            return _box(result, (self,), launches=1)
        out._a[...] = result
        _count(launches=1)
        return out

    def dump(self, file):
        import pickle

        pickle.dump(self, file, -1)

    def dumps(self):
        import pickle

        return pickle.dumps(self, -1)

    def __getattr__(self, name):
        if name in _real_ndarray_names():
            raise AttributeError(f"the CuPy stand-in does not mirror cupy.ndarray.{name}")
        raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")


def _host_indices(indices):
    """Host index data given to a device op: copied over, unless it is a Python int."""
    if isinstance(indices, (int, np.integer)):
        return indices
    _count(host_to_device=1)
    return np.asarray(indices)


def _unpickle(host):
    return _module().array(host)


# Methods that behave as NumPy's, given CuPy's signature, and their launch counts
# (None: the generic rule, 1 for new memory and 0 for a view).
_GENERIC_METHODS = {
    "all": 1, "any": 1, "max": 1, "min": 1, "sum": 1, "mean": 1, "prod": 1,
    "cumsum": 1, "cumprod": 1, "var": 2, "std": 2, "trace": 1, "round": 1, "clip": 1,
    "conj": None, "conjugate": None, "dot": 1, "repeat": 1, "choose": 1,
    "diagonal": 0, "flatten": 1, "ravel": None, "reshape": None, "squeeze": 0,
    "swapaxes": 0, "transpose": 0, "view": 0, "searchsorted": 1, "partition": 1,
    "argpartition": 1, "byteswap": 1,
}  # fmt: skip


def _generic_method(name, launches):
    sig = signature_of(getattr(_real().ndarray, name))
    numpy_method = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        _check_call(sig, f"cupy.ndarray.{name}", args, kwargs)
        where = f"cupy.ndarray.{name}"
        host_args = _unwrap(args, where)
        host_kwargs = {k: _unwrap(v, where) for k, v in kwargs.items()}
        if name == "dot":
            _count(launches=_contiguity_copies((self._a, *host_args[:1])))
        result = numpy_method(self._a, *host_args, **host_kwargs)
        return _box(result, (self, *_arrays_in((args, kwargs))), launches)

    method.__name__ = name
    method.__doc__ = f"``cupy.ndarray.{name}{sig}`` computed by NumPy."
    return method


def _contiguity_copies(arrays):
    """CuPy makes a contiguous copy of a BLAS operand that is neither C- nor F-ordered."""
    return sum(
        1
        for a in arrays
        if isinstance(a, np.ndarray) and not (a.flags.c_contiguous or a.flags.f_contiguous)
    )


# ---------------------------------------------------------------------------
# ufuncs
# ---------------------------------------------------------------------------


class ufunc:
    """A CuPy ufunc (``cupy/_core/_kernel.pyx``) computed by the NumPy function of its name.

    Operands: stand-in arrays, Python scalars and NumPy scalars; keywords:
    ``out``, ``dtype``, ``casting`` and CuPy's private ``_where``. Anything
    else is a ``TypeError``, as in CuPy (``where=`` included). One launch.
    """

    def __init__(self, name, real):
        self.__name__ = name
        self.name = real.name if hasattr(real, "name") else name
        self.nin, self.nout, self.nargs = real.nin, real.nout, real.nargs
        self._numpy = getattr(np, name)
        self.__doc__ = real.__doc__

    def __repr__(self):
        return f"<ufunc '{self.name}' (CuPy stand-in)>"

    def __call__(self, *args, **kwargs):
        out = kwargs.pop("out", None)
        where = kwargs.pop("_where", None)
        dtype = kwargs.pop("dtype", None)
        casting = kwargs.pop("casting", None)
        if kwargs:
            raise TypeError(f"Wrong arguments {sorted(kwargs)}")
        if not self.nin <= len(args) <= self.nargs:
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} "
                f"or {self.nargs} (with outputs), but given {len(args)}."
            )
        inputs, outs = list(args[: self.nin]), list(args[self.nin :])
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = list(out) if isinstance(out, tuple) else [out]
        for x in inputs:
            if not (isinstance(x, ndarray) or _is_scalar(x)):
                raise TypeError(f"Unsupported type {type(x)}")
        for o in outs:
            if o is not None and not isinstance(o, ndarray):
                raise TypeError(f"Unsupported type {type(o)}")
        if where is not None and not (isinstance(where, ndarray) or _is_scalar(where)):
            raise TypeError(f"Unsupported type {type(where)}")
        host_inputs = [x._a if isinstance(x, ndarray) else x for x in inputs]
        options = {} if dtype is None else {"dtype": dtype}
        if casting is not None:
            options["casting"] = casting
        if any(o is not None for o in outs):
            options["out"] = tuple(None if o is None else o._a for o in outs)
        if where is not None:
            options["where"] = where._a if isinstance(where, ndarray) else bool(where)
        plan = _nudge_plan(self._numpy.__name__, host_inputs)
        result = self._numpy(*host_inputs, **options)
        for r in result if isinstance(result, tuple) else (result,):
            _apply_nudge(self._numpy.__name__, plan, r, host_inputs)
        sources = [x for x in (*inputs, *outs) if isinstance(x, ndarray)]
        return _box(result, sources, launches=1)

    # CuPy implements these only for a few ufuncs (cupy/_core/_kernel.pyx).
    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        if self.__name__ == "add":
            return array.sum(axis, dtype, out, keepdims)
        if self.__name__ == "multiply":
            return array.prod(axis, dtype, out, keepdims)
        raise NotImplementedError(f"`{self.name}.reduce` is not supported yet")

    def accumulate(self, array, axis=0, dtype=None, out=None):
        if self.__name__ == "add":
            return array.cumsum(axis, dtype, out)
        if self.__name__ == "multiply":
            return array.cumprod(axis, dtype, out)
        raise NotImplementedError(f"`{self.name}.accumulate` is not supported yet")

    def outer(self, A, B, **kwargs):
        A, B = _module().array(A), _module().array(B)  # host operands are copied over
        A, B = A.reshape(A.shape + (1,) * B.ndim), B.reshape((1,) * A.ndim + B.shape)
        return self(A, B, **kwargs)

    def at(self, a, indices, b=None):
        ops = {"add": "add", "maximum": "max", "minimum": "min"}
        if self.__name__ not in ops:
            raise NotImplementedError(f"`{self.name}.at` is not supported yet")
        a._scatter(ops[self.__name__], indices, b)


class _SpecialUfunc(ufunc):
    """A ufunc of ``cupyx.scipy.special`` (types ``f->f`` and ``d->d``), which NumPy lacks:
    computed element by element in float64 with Python's ``math`` (within an ulp of
    the exact value), then rounded to the input's float type. Slow, but the stand-in's
    arrays are test-sized."""

    def __init__(self, name, real, scalar_function):
        self.__name__ = name
        self.name = real.name if hasattr(real, "name") else name
        self.nin, self.nout, self.nargs = real.nin, real.nout, real.nargs
        self.__doc__ = real.__doc__
        elementwise = np.frompyfunc(scalar_function, 1, 1)

        def compute(x, out=None, dtype=None, casting=None):
            x = np.asarray(x)
            single = x.dtype in (np.float16, np.float32)  # f->f, and d->d for the rest
            kind = np.dtype(dtype if dtype is not None else np.float32 if single else np.float64)
            values = elementwise(x.astype(np.float64)).astype(np.float64).astype(kind)
            if out is not None and out[0] is not None:
                out[0][...] = values
                return out[0]
            return values

        compute.__name__ = name
        self._numpy = compute


_SPECIAL_FUNCTIONS = {
    "erf": math.erf,
    "erfc": math.erfc,
    "ndtr": lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)),
}


def _matmul_function(real):
    """``cupy.matmul`` (a generalized ufunc in CuPy): device operands only, one cuBLAS call."""
    sig = signature_of(real)

    def matmul(*args, **kwargs):
        _check_call(sig, "cupy.matmul", args, kwargs)
        for x in args[:2]:
            if not isinstance(x, ndarray):
                raise TypeError(f"Unsupported type {type(x)}")
        host = _unwrap(args, "cupy.matmul")
        kwargs = {k: _unwrap(v, "cupy.matmul") for k, v in kwargs.items()}
        _count(launches=_contiguity_copies(host[:2]))
        return _box(np.matmul(*host, **kwargs), _arrays_in((args, kwargs)), launches=1)

    matmul.__doc__ = real.__doc__
    return matmul


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

# Creation: a memset or a fill kernel, except empty (allocation only).
_CREATION = {"zeros", "ones", "full", "arange", "eye", "identity", "linspace", "tri"}
_CREATION |= {"zeros_like", "ones_like", "full_like"}
_EMPTY = {"empty", "empty_like"}
# The size of the result comes back to the host before the result is made.
_SYNCHRONIZING = {"nonzero", "argwhere", "flatnonzero", "compress", "unique", "extract"}
# CuPy returns a 0-d device array where NumPy returns a Python bool.
_BOOLEAN_RESULTS = {"allclose", "array_equal", "array_equiv"}
# These print or save a host copy (``numpy.array2string(a.get())`` and so on).
_TO_HOST = {
    "array2string",
    "array_repr",
    "array_str",
    "save",
    "savez",
    "savez_compressed",
    "savetxt",
}


def _generic_function(qualname, real, numpy_function):
    """``qualname`` (``cupy.exp``, ``cupy.linalg.svd``) computed by ``numpy_function``.

    CuPy's signature is checked, NumPy operands refused, results boxed and
    launches counted (creation 1, ``empty`` 0, else the generic rule).
    """
    sig = signature_of(real)
    name = qualname.rsplit(".", 1)[-1]

    def function(*args, **kwargs):
        _check_call(sig, qualname, args, kwargs)
        where = qualname
        host_args = _unwrap(args, where)
        host_kwargs = {k: _unwrap(v, where) for k, v in kwargs.items()}
        sources = _arrays_in((args, kwargs))
        if name in _SYNCHRONIZING or (name == "where" and len(args) + len(kwargs) == 1):
            _count(launches=1)
            _sync_copy()
        if name in _TO_HOST and sources:
            _sync_copy()
        if name in ("dot", "vdot", "inner", "tensordot", "einsum", "kron", "outer"):
            _count(launches=_contiguity_copies(host_args))
        result = numpy_function(*host_args, **host_kwargs)
        if name in _BOOLEAN_RESULTS:
            result = np.asarray(result)
        count = 0 if name in _EMPTY else 1 if name in _CREATION else None
        return _box(result, sources, count)

    function.__name__ = name
    function.__qualname__ = qualname
    function.__doc__ = f"``{qualname}{sig}`` computed by NumPy."
    return function


def _conversion_functions(real):
    """``array``, ``asarray``, ``asanyarray``, ``asnumpy`` and ``get_array_module``."""

    def to_device(obj, dtype, copy, order, ndmin=0, blocking=False):
        if isinstance(obj, ndarray):  # already on the device: a copy or a cast, or itself
            a = np.array(obj._a, dtype=dtype, copy=copy, order=order or "K", ndmin=ndmin)
            return _box(a, (obj,))
        inside = _arrays_in([obj]) if isinstance(obj, (list, tuple)) else []
        if inside:  # a sequence of device arrays is joined on the device
            a = np.array(_unwrap_sequence(obj), dtype=dtype, order=order or "K", ndmin=ndmin)
            return _box(a, inside, launches=1)
        _count(host_to_device=1, syncs=int(bool(blocking)))
        a = np.array(obj, dtype=dtype, copy=True, order=order or "K", ndmin=ndmin)
        return _wrap(a)

    def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
        return to_device(obj, dtype, copy, order, ndmin, blocking)

    def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
        return to_device(a, dtype, copy, order, 0, blocking)

    def asanyarray(a, dtype=None, order=None, *, copy=None, blocking=False):
        return to_device(a, dtype, copy, order, 0, blocking)

    def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
        if isinstance(a, ndarray):
            return a.get(stream=stream, order=order, out=out, blocking=blocking)
        temp = np.asarray(a, order=order)
        if out is not None:
            out[...] = temp
            return out
        return temp

    def get_array_module(*args):
        return _module() if any(isinstance(a, ndarray) for a in args) else np

    made = {
        "array": array,
        "asarray": asarray,
        "asanyarray": asanyarray,
        "asnumpy": asnumpy,
        "get_array_module": get_array_module,
    }
    for name, fn in made.items():  # the stand-in's signatures must be the real ones
        if signature_of(fn) != signature_of(getattr(real, name)):
            raise AssertionError(f"cupy.{name}{signature_of(getattr(real, name))} has changed")
        fn.__doc__ = f"``cupy.{name}``, with the host-to-device copy counted."
    return made


def _unwrap_sequence(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return [_unwrap_sequence(i) for i in x]
    return x


# ---------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------


class _BitGenerator:
    """``cupy.random.XORWOW`` and its kin: a seed, and one launch that sets up the states.

    The stream is NumPy's Philox keyed by the seed and the generator's kind, so the
    same seed gives other numbers than ``numpy.random.default_rng`` (as on a GPU)
    and than another kind of bit generator.
    """

    kind = "XORWOW"

    def __init__(self, seed=None, *, size=-1):
        key = None if seed is None else [int(seed), zlib.crc32(self.kind.encode())]
        self._numpy = np.random.Philox(key)
        _count(launches=1)  # curand's state set-up kernel


def _bit_generator_class(name):
    return type(name, (_BitGenerator,), {"kind": name, "__doc__": f"``cupy.random.{name}``."})


class Generator:
    """``cupy.random.Generator``: only the real one's methods, drawn by NumPy's Philox.

    ``Generator(bit_generator)`` takes one of the stand-in's bit generators
    (``default_rng(seed)`` makes an ``XORWOW``, as CuPy does). Philox rather
    than NumPy's default PCG64, so that the same seed does not give the same
    numbers as ``numpy.random.default_rng``. Each draw is one launch; results
    are stand-in arrays.
    """

    def __init__(self, bit_generator):
        if not isinstance(bit_generator, _BitGenerator):
            raise TypeError(
                f"cupy.random.Generator takes a CuPy BitGenerator, not {type(bit_generator)}"
            )
        self._numpy = np.random.Generator(bit_generator._numpy)

    def __getattr__(self, name):
        with _real_modules():
            real = _real().random.Generator
        if name.startswith("_") or not hasattr(real, name):
            raise AttributeError(f"'cupy.random.Generator' object has no attribute '{name}'")
        sig = signature_of(getattr(real, name))
        numpy_method = getattr(self._numpy, name)
        takes_dtype = "dtype" in inspect.signature(numpy_method).parameters

        def draw(*args, **kwargs):
            _check_call(sig, f"cupy.random.Generator.{name}", args, kwargs)
            bound = sig.bind(*args, **kwargs)
            where = f"cupy.random.Generator.{name}"
            arguments = {k: _unwrap(v, where) for k, v in bound.arguments.items()}
            dtype = arguments.pop("dtype", None) if not takes_dtype else None
            out = arguments.pop("out", None)
            result = np.asarray(numpy_method(**arguments))
            result = result if dtype is None else result.astype(dtype)
            if out is not None:
                out[...] = result
                _count(launches=1)
                return bound.arguments["out"]
            return _box(result, (), launches=1)

        draw.__name__ = name
        return draw


def _random_namespace(real):
    """``cupy.random``: ``default_rng`` and ``Generator``; the legacy functions on one state."""
    real.Generator  # noqa: B018  (loads lazily, by importing cupy: do it while cupy is real)
    state = [np.random.RandomState(np.random.MT19937(0))]

    bit_generators = {
        name: _bit_generator_class(name)
        for name in ("XORWOW", "MRG32k3a", "Philox4x3210")
        if hasattr(real, name)
    }

    def default_rng(seed=None):
        return Generator(bit_generators["XORWOW"](seed))

    def seed(seed=None):
        state[0] = np.random.RandomState(np.random.MT19937(seed))

    def legacy(name, real_fn):
        sig = signature_of(real_fn)

        def draw(*args, **kwargs):
            _check_call(sig, f"cupy.random.{name}", args, kwargs)
            where = f"cupy.random.{name}"
            args, kwargs = _unwrap(args, where), {k: _unwrap(v, where) for k, v in kwargs.items()}
            dtype = kwargs.pop("dtype", None)
            result = getattr(state[0], name)(*args, **kwargs)
            if result is None:  # shuffle: in place
                _count(launches=1)
                return None
            result = np.asarray(result)
            return _box(result if dtype is None else result.astype(dtype), (), launches=1)

        return draw

    overrides = {"default_rng": default_rng, "Generator": Generator, "seed": seed}
    overrides.update(bit_generators)
    return _Namespace("cupy.random", real, np.random, overrides, make_function=legacy)


# ---------------------------------------------------------------------------
# cupy.cuda: one device, streams that synchronize
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cuda_namespace():
    real = _real().cuda

    class Device:
        """``cupy.cuda.Device``: device 0 of one; ``synchronize()`` waits for it."""

        def __init__(self, device=None):
            self.id = 0 if device is None else int(device)
            if self.id != 0:
                raise ValueError(f"the CuPy stand-in has one device, 0, not {self.id}")

        compute_capability = "90"

        def synchronize(self):
            _count(syncs=1)

        def use(self):
            return None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        def __hash__(self):
            return hash(self.id)

        def __repr__(self):
            return f"<CUDA Device {self.id}>"

    class Stream:
        """``cupy.cuda.Stream``: work is in order anyway; ``synchronize()`` is counted."""

        null = None

        def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
            self.is_non_blocking = bool(non_blocking)

        def synchronize(self):
            _count(syncs=1)

        def use(self):
            _current_stream[0] = self
            return self

        def __enter__(self):
            self._previous = _current_stream[0]
            _current_stream[0] = self
            return self

        def __exit__(self, *exc):
            _current_stream[0] = self._previous
            return False

    Stream.null = Stream(null=True)
    _current_stream = [Stream.null]

    def get_current_stream(device_id=-1):
        return _current_stream[0]

    def device_synchronize():
        _count(syncs=1)

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDevice=lambda: 0, deviceSynchronize=device_synchronize
    )
    made = {
        "Device": Device,
        "Stream": Stream,
        "get_current_stream": get_current_stream,
        "is_available": lambda: True,
        "runtime": runtime,
    }
    _require_names(real, made, "cupy.cuda")
    _require_names(real.runtime, vars(runtime), "cupy.cuda.runtime")
    _require_names(real.Device, ("synchronize", "use", "id", "compute_capability"), "Device")
    _require_names(real.Stream, ("synchronize", "use", "null"), "cupy.cuda.Stream")
    return _Namespace("cupy.cuda", real, None, made)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


class _Namespace(types.ModuleType):
    """A stand-in module named ``name``: an attribute exists only if ``real`` has it.

    Built lazily, name by name: ``overrides`` first; then objects CuPy takes
    from NumPy itself (dtypes, ``finfo``, ``pi``) as they are; then CuPy's
    ufuncs and functions that ``numpy_module`` has under the same name
    (``make_function(name, real)`` builds those when given). Anything else
    the real module has raises ``AttributeError`` saying the stand-in does
    not mirror it.
    """

    def __init__(self, name, real, numpy_module, overrides=(), make_function=None):
        super().__init__(name)
        self._real_module, self._numpy_module = real, numpy_module
        self._overrides, self._make_function = dict(overrides), make_function
        self.__doc__ = f"CuPy stand-in for {name} (tests/cupy_standin.py)."

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            with _real_modules():
                real = getattr(self._real_module, name)
        except AttributeError:
            raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'") from None
        value = self._build(name, real)
        setattr(self, name, value)
        return value

    def _build(self, name, real):
        if name in self._overrides:
            return self._overrides[name]
        numpy_value = getattr(self._numpy_module, name, None)
        if numpy_value is not None and real is numpy_value:
            return real  # CuPy re-exports NumPy's own object
        if isinstance(real, (int, float, bool)):
            return real
        if type(real).__name__ == "ufunc" and isinstance(numpy_value, np.ufunc):
            return ufunc(name, real)
        if callable(real) and not isinstance(real, type) and callable(numpy_value):
            if self._make_function is not None:
                return self._make_function(name, real)
            adapted = _NUMPY_ADAPTERS.get(name, numpy_value)
            return _generic_function(f"{self.__name__}.{name}", real, adapted)
        raise AttributeError(f"the CuPy stand-in does not mirror {self.__name__}.{name}")

    def __dir__(self):
        return sorted(dir(self._real_module))

    def __repr__(self):
        return f"<module '{self.__name__}' (CuPy stand-in over NumPy)>"


# Where NumPy's function of the same name differs from CuPy's in a way that matters.
_NUMPY_ADAPTERS = {
    "argsort": lambda a, axis=-1, kind=None: np.argsort(a, axis=axis, kind="stable"),
    "sort": lambda a, axis=-1, kind=None: np.sort(a, axis=axis, kind="stable"),
    "take": lambda a, indices, axis=None, out=None: np.take(a, indices, axis, out, mode="wrap"),
    "take_along_axis": lambda a, indices, axis: np.take_along_axis(
        a, indices if axis is None else np.mod(indices, a.shape[axis]), axis
    ),
}


@contextlib.contextmanager
def _real_modules():
    """The real ``cupy``/``cupyx`` in ``sys.modules`` while reading the real CuPy.

    Some of its attributes load lazily (``cupy.random.Generator`` runs
    ``import cupy.random._generator_api``), which must not find the stand-in.
    """
    swapped = {
        n: sys.modules[n]
        for n in ("cupy", "cupyx")
        if n in _MODULES and sys.modules.get(n) is _MODULES[n]
    }
    sys.modules.update({"cupy": _real(), "cupyx": _REAL_CUPYX[0]} if swapped else {})
    try:
        yield
    finally:
        sys.modules.update(swapped)


def _real():
    """The real ``cupy`` (kept here: after ``install()``, ``import cupy`` is the stand-in)."""
    if not _REAL:
        import cupy

        _REAL.append(cupy)
    return _REAL[0]


_REAL: list = []
_REAL_CUPYX: list = []
_MODULES: dict = {}  # "cupy" and "cupyx": the stand-ins, once built


def _module():
    return _MODULES["cupy"]


def _module_ufunc(name):
    return getattr(_MODULES["cupy"], name)


@functools.lru_cache(maxsize=1)
def _real_ndarray_names():
    return frozenset(dir(_real().ndarray))


def _check_ndarray_against_real():
    """The stand-in's array has no public name ``cupy.ndarray`` lacks, and its hand-written
    methods take exactly the real ones' parameters (the generic ones check at each call)."""
    extra = {"__getattr__", "__weakref__", "__slots__", "__dict__", "__module__", "__qualname__"}
    own = {n for n in vars(ndarray) if not (n.startswith("_") and not n.startswith("__"))}
    if own - _real_ndarray_names() - extra:
        raise AssertionError(f"cupy.ndarray has no {sorted(own - _real_ndarray_names() - extra)}")
    for name, member in vars(ndarray).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        mine = list(inspect.signature(member).parameters)[1:]
        real = signature_of(getattr(_real().ndarray, name))
        if real is not None and mine != ["args", "kwargs"] and mine != list(real.parameters):
            raise AssertionError(f"cupy.ndarray.{name}{real} is not the stand-in's {mine}")


def build():
    """The stand-in ``cupy`` module, built once from the installed real CuPy."""
    if "cupy" in _MODULES:
        return _MODULES["cupy"]
    cupy = _real()
    import cupyx
    import cupyx.scipy.special  # noqa: F401  (the real one, read for names and signatures)

    _REAL_CUPYX.append(cupyx)

    for name, launches in _GENERIC_METHODS.items():
        if hasattr(cupy.ndarray, name):
            setattr(ndarray, name, _generic_method(name, launches))
    _check_ndarray_against_real()

    matmul = _matmul_function(cupy.matmul)
    stride_tricks = _Namespace(
        "cupy.lib.stride_tricks", cupy.lib.stride_tricks, np.lib.stride_tricks
    )
    overrides = {
        "ndarray": ndarray,
        "ufunc": ufunc,
        "matmul": matmul,
        **_conversion_functions(cupy),
        "random": _random_namespace(cupy.random),
        "linalg": _Namespace("cupy.linalg", cupy.linalg, np.linalg, {"matmul": matmul}),
        "fft": _Namespace("cupy.fft", cupy.fft, np.fft),
        "lib": _Namespace("cupy.lib", cupy.lib, None, {"stride_tricks": stride_tricks}),
        "cuda": _cuda_namespace(),
    }
    standin = _Namespace("cupy", cupy, np, overrides)
    standin.__version__ = cupy.__version__
    _MODULES["cupy"] = standin
    _MODULES["cupyx"] = _cupyx_namespace(cupyx)
    return standin


def _cupyx_namespace(real):
    """``cupyx``: ``scatter_add/max/min`` (``a.scatter_*``) and ``allow_synchronize``."""

    def scatter_add(a, slices, value):
        a.scatter_add(slices, value)

    def scatter_max(a, slices, value):
        a.scatter_max(slices, value)

    def scatter_min(a, slices, value):
        a.scatter_min(slices, value)

    @contextlib.contextmanager
    def allow_synchronize(allow):
        _sync_allowed.append(bool(allow))
        try:
            yield
        finally:
            _sync_allowed.pop()

    special = {
        name: _SpecialUfunc(name, getattr(real.scipy.special, name), function)
        for name, function in _SPECIAL_FUNCTIONS.items()
    }
    scipy = _Namespace(
        "cupyx.scipy",
        real.scipy,
        None,
        {"special": _Namespace("cupyx.scipy.special", real.scipy.special, None, special)},
    )
    made = {
        "scatter_add": scatter_add,
        "scatter_max": scatter_max,
        "scatter_min": scatter_min,
        "allow_synchronize": allow_synchronize,
        "DeviceSynchronized": real.DeviceSynchronized,
        "scipy": scipy,
    }
    _require_names(real, made, "cupyx")
    return _Namespace("cupyx", real, None, made)


def _require_names(real, names, where):
    """The stand-in offers nothing the real module lacks: checked when it is built."""
    missing = [n for n in names if not hasattr(real, n)]
    if missing:
        raise AssertionError(f"{where} has no {missing}: the stand-in must not offer them")


# ---------------------------------------------------------------------------
# Installing into tinyvit
# ---------------------------------------------------------------------------

_saved: list[dict] = []


def install(nudge=0, seed=0):
    """Make tinyvit's ``"cuda"`` device run on the stand-in; returns the stand-in module.

    Hands the stand-in ``cupy`` and ``cupyx`` to ``tinyvit.backend.use_cupy``
    (which forgets its cached GPU check and ``"cuda"`` generator); nothing
    else changes, ``sys.modules`` included. ``nudge=k`` keeps float32 ULP
    nudging on until ``uninstall()``. Installs nest.
    """
    from tinyvit import backend

    standin = build()
    nudging = (int(nudge), int(seed), NUDGED) if nudge else None
    _saved.append({"previous": backend.use_cupy(standin, _MODULES["cupyx"]), "nudge": nudging})
    if nudging:
        _nudge.append(nudging)
    return standin


def uninstall():
    """Undo the last ``install()``."""
    from tinyvit import backend

    saved = _saved.pop()
    backend.use_cupy(*saved["previous"])
    if saved["nudge"] in _nudge:
        _nudge.remove(saved["nudge"])


def installed() -> bool:
    """Whether tinyvit's ``"cuda"`` device is on the stand-in now."""
    from tinyvit import backend

    return "cupy" in _MODULES and backend.cupy is _MODULES["cupy"]
