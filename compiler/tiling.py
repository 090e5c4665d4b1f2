"""Tile one ternary projection onto the array and schedule it as an instruction stream.

One projection is y[t, n] = sum_k x[t, k] * w[n, k] for T tokens, N output rows, K inputs.
The plan cuts N into row tiles of one memory word of weights (5 * port_bytes rows in base 3,
4 * port_bytes in 2-bit codes; `ArrayParams.nm_rows` = 4 * port_bytes rows of N:M slots in two
words), K into k-tiles, and T into token batches that fit one
accumulator slot, then emits LOAD / MATMUL / STORE with dependency tokens so that loads of
the next tiles overlap the current MATMUL (`slots`-deep buffering) and STOREs overlap the next
row tile (two accumulator slots).

Memory images (word addresses relative to each region's base):
- weights: row tile i, column k at word i * K + k (see `pack_weight_image`); with N:M slots
  (`nm` = N), slot c of group q (columns 8q .. 8q+7), half h of the tile's rows at word
  i * tile_words + (q * N + c) * 2 + h, tile_words = ceil(K / 8) * N * 2;
- activations: token group g (token_lanes tokens), byte k * token_lanes + j holds x[g*Lt + j, k]
  in a row of `x_group_words` words (`pack_activation_image`);
- results: token t, row n as little-endian int32 at byte t * y_row_bytes + 4 * n.
"""

from dataclasses import dataclass

import numpy as np

from rtl.isa import (
    NM_EMPTY,
    NM_M,
    NM_MAX_N,
    NM_MIN_N,
    NM_SLOT_BITS,
    NM_SLOTS_PER_BYTE,
    NM_WORDS_PER_ROW,
    TRITS_PER_BYTE,
    Buffer,
    Halt,
    Instr,
    Load,
    MatMul,
    Store,
    WeightEncoding,
)
from rtl.params import OUT_BYTES, ArrayParams

__all__ = ["Plan", "plan_projection", "pack_weight_image", "pack_activation_image",
           "unpack_results", "unpack_weight_image", "pack_words", "DECODE_K_TILE",
           "PREFILL_K_TILE", "rows_per_tile", "tile_words", "weight_words"]


#: Columns per k-tile unless the buffers or the activation alignment say otherwise. Decode
#: (one token group per batch) is port-bound and wants short tiles (see `plan_projection`);
#: prefill is lane-bound, its fill is a small share of its work, and longer tiles keep
#: programs short.
DECODE_K_TILE = 64
PREFILL_K_TILE = 256


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def rows_per_tile(params: ArrayParams, encoding: WeightEncoding, nm: int = 0) -> int:
    """Output rows one row tile covers: the rows one weight word reaches."""
    return params.nm_rows if nm else TRITS_PER_BYTE[WeightEncoding(encoding)] * params.port_bytes


def tile_words(k: int, nm: int = 0) -> int:
    """Weight words of one row tile of a k-column projection: one per column, or with N:M
    two per slot row, N slot rows per group of NM_M columns (the last one zero-padded)."""
    return _ceil(k, NM_M) * nm * NM_WORDS_PER_ROW if nm else k


def weight_words(params: ArrayParams, n: int, k: int, encoding: WeightEncoding,
                 nm: int = 0) -> int:
    """Words of an (n x k) projection's weight image at `params`."""
    return _ceil(n, rows_per_tile(params, encoding, nm)) * tile_words(k, nm)


@dataclass(frozen=True)
class Plan:
    """The geometry of one lowered projection: tiles, image sizes and the program.

    `nm` is 0 for the dense encodings, else N of the N:M slots (`WeightEncoding.NM`).
    """

    params: ArrayParams
    n: int
    k: int
    tokens: int
    encoding: WeightEncoding
    rows_per_tile: int
    k_tile: int
    token_batch: int
    slots: int
    w_base: int
    x_base: int
    y_base: int
    program: tuple
    nm: int = 0

    @property
    def n_tiles(self) -> int:
        return _ceil(self.n, self.rows_per_tile)

    @property
    def nm_groups(self) -> int:
        """Groups of NM_M columns (the last one zero-padded past k)."""
        return _ceil(self.k, NM_M)

    @property
    def tile_words(self) -> int:
        """Weight words of one row tile: one per column, or two per slot row with N:M."""
        return tile_words(self.k, self.nm)

    @property
    def w_words(self) -> int:
        return weight_words(self.params, self.n, self.k, self.encoding, self.nm)

    @property
    def x_group_words(self) -> int:
        return _ceil(self.k * self.params.token_lanes, self.params.port_bytes)

    @property
    def groups(self) -> int:
        return _ceil(self.tokens, self.params.token_lanes)

    @property
    def x_words(self) -> int:
        return self.groups * self.x_group_words

    @property
    def tile_out_words(self) -> int:
        return self.rows_per_tile * OUT_BYTES // self.params.port_bytes

    @property
    def y_row_words(self) -> int:
        return self.n_tiles * self.tile_out_words

    @property
    def y_words(self) -> int:
        return self.tokens * self.y_row_words

    @property
    def weight_bytes(self) -> int:
        return self.w_words * self.params.port_bytes


def plan_projection(params: ArrayParams, n: int, k: int, tokens: int,
                    encoding: WeightEncoding = WeightEncoding.BASE3, *,
                    w_base: int = 0, x_base: int | None = None, y_base: int | None = None,
                    k_tile: int | None = None, token_batch: int | None = None,
                    slots: int | None = None, halt: bool = True, nm: int = 0) -> Plan:
    """Plan y = x . w^T for an (n x k) ternary matrix and `tokens` tokens.

    Regions default to weights, then activations, then results, back to back. With
    `WeightEncoding.NM`, `nm` is N (NM_MIN_N .. NM_MAX_N): every group of NM_M columns of a row
    holds at most N non-zero weights, stored as N slots; the dense encodings take nm = 0.
    """
    p = params
    encoding = WeightEncoding(encoding)
    if encoding not in p.encodings:
        raise ValueError(f"encoding {encoding.name} is not enabled at scale point {p.name}")
    if encoding == WeightEncoding.NM:
        if isinstance(nm, bool) or not isinstance(nm, int) or not NM_MIN_N <= nm <= NM_MAX_N:
            raise ValueError(f"nm={nm!r}: N:M weights need N in {NM_MIN_N}..{NM_MAX_N}")
    elif nm:
        raise ValueError(f"nm={nm!r} is only for {WeightEncoding.NM.name} weights")
    if min(n, k, tokens) < 1:
        raise ValueError(f"empty projection: n={n} k={k} tokens={tokens}")
    if k > p.max_k:
        raise ValueError(f"k={k} exceeds the accumulator's proven range (max_k={p.max_k})")
    rows = rows_per_tile(p, encoding, nm)
    slots = slots or (4 if p.wbuf_rows >= 16 else 2)
    # k-tiles start on word boundaries of the activation image (with N:M, a multiple of NM_M:
    # the NM encoding needs port_bytes >= NM_M * token_lanes).
    k_align = p.port_bytes // p.token_lanes
    # A weight slot holds one buffer row per column, or N rows per group of NM_M columns.
    wslot = p.wbuf_rows // slots
    max_kt = (wslot // nm * NM_M if nm else wslot) // k_align * k_align
    token_batch = token_batch or min(tokens, p.batch_tokens)
    if token_batch > p.batch_tokens:
        raise ValueError(f"token_batch={token_batch} exceeds the {p.batch_tokens} tokens of "
                         f"half the accumulators")
    if token_batch % p.token_lanes and token_batch < tokens:
        raise ValueError(f"token_batch={token_batch} must be a multiple of the "
                         f"{p.token_lanes} token lanes when it splits {tokens} tokens")
    batch_groups = _ceil(token_batch, p.token_lanes)
    # Activation rows per k-tile must fit an activation slot.
    max_kt_x = ((p.abuf_rows // slots) // batch_groups) * p.port_bytes // p.token_lanes
    max_kt = min(max_kt, max_kt_x // k_align * k_align)
    if max_kt < 1:
        raise ValueError(f"buffers of scale point {p.name} are too small for "
                         f"{token_batch} tokens per batch")
    # Small k-tiles: a MATMUL starts only when its whole tile has arrived and the lanes run
    # exactly as fast as the port delivers base-3 weights, so compute trails the port by one
    # tile for the whole projection, and that tile (plus the latency) is the port's idle tail.
    target = DECODE_K_TILE if batch_groups == 1 else PREFILL_K_TILE
    k_tile = k_tile or max(k_align, min(max_kt, target // k_align * k_align,
                                        _ceil(k, k_align) * k_align))
    if k_tile % k_align or k_tile > max_kt:
        raise ValueError(f"k_tile={k_tile} must be a multiple of {k_align} and <= {max_kt}")

    plan = Plan(p, n, k, tokens, encoding, rows, k_tile, token_batch, slots,
                w_base, 0, 0, (), nm)
    x_base = w_base + plan.w_words if x_base is None else x_base
    y_base = x_base + plan.x_words if y_base is None else y_base
    plan = Plan(p, n, k, tokens, encoding, rows, k_tile, token_batch, slots,
                w_base, x_base, y_base, (), nm)
    return Plan(**{**plan.__dict__, "program": tuple(_schedule(plan, halt))})


def _schedule(plan: Plan, halt: bool) -> list:
    p = plan.params
    wslot = p.wbuf_rows // plan.slots
    aslot = p.abuf_rows // plan.slots
    # Two accumulator slots let STORE drain one tile while the lanes fill the next; a scale
    # point with room for only one batch (tiny) serializes MATMULs and STOREs instead.
    acc_slots = 2 if p.acc_groups >= 2 * _ceil(plan.token_batch, p.token_lanes) else 1
    acc_slot = p.acc_groups // acc_slots
    gw = plan.x_group_words
    align_bytes = p.port_bytes // p.token_lanes
    batches = [(t0, min(plan.token_batch, plan.tokens - t0))
               for t0 in range(0, plan.tokens, plan.token_batch)]
    tiles = [(t0, tb, i) for t0, tb in batches for i in range(plan.n_tiles)]
    ktiles = [[(k0, min(plan.k_tile, plan.k - k0)) for k0 in range(0, plan.k, plan.k_tile)]
              for _ in tiles]
    steps_total = sum(len(kt) for kt in ktiles)
    # Decode: with one token batch whose activations fit, load them once and keep them.
    resident = len(batches) == 1 and plan.x_words <= p.abuf_rows

    prog: list[Instr] = []
    if resident:
        prog.append(Load(buffer=Buffer.ACT, sram=0, rows=plan.groups, length=gw,
                         dram=plan.x_base, stride=gw))
    step = 0
    for ti, (t0, tb, i) in enumerate(tiles):
        groups = _ceil(tb, p.token_lanes)
        n_rows = min(plan.rows_per_tile, plan.n - i * plan.rows_per_tile)
        acc = (ti % acc_slots) * acc_slot
        for j, (k0, kl) in enumerate(ktiles[ti]):
            slot = step % plan.slots
            reuse = int(step >= plan.slots)
            if resident:
                abuf, x_stride = k0 // align_bytes, gw
            else:
                x_len = _ceil(kl * p.token_lanes, p.port_bytes)
                abuf, x_stride = slot * aslot, x_len
                prog.append(Load(
                    buffer=Buffer.ACT, sram=abuf, rows=groups, length=x_len,
                    dram=plan.x_base + (t0 // p.token_lanes) * gw + k0 // align_bytes,
                    stride=gw, pop_next=reuse))
                reuse = 0
            if plan.nm:
                # N slot rows per group of NM_M columns, two words each; the MATMUL runs whole
                # groups (columns past k read the activation image's zero padding).
                w_len = _ceil(kl, NM_M) * plan.nm * NM_WORDS_PER_ROW
                w_at = k0 // NM_M * plan.nm * NM_WORDS_PER_ROW
                k_len = _ceil(kl, NM_M) * NM_M
            else:
                w_len, w_at, k_len = kl, k0, kl
            prog.append(Load(
                buffer=Buffer.WEIGHT, encoding=plan.encoding, sram=slot * wslot, rows=1,
                length=w_len, dram=plan.w_base + i * plan.tile_words + w_at, stride=0,
                push_next=1, pop_next=reuse))
            last_k = j == len(ktiles[ti]) - 1
            prog.append(MatMul(
                accumulate=int(j > 0), nm=plan.nm, wbuf=slot * wslot, abuf=abuf, acc=acc,
                k_len=k_len, tokens=tb, n_rows=n_rows, x_stride=x_stride,
                pop_prev=1, push_prev=int(step + plan.slots < steps_total),
                pop_next=int(j == 0 and ti >= acc_slots), push_next=int(last_k)))
            step += 1
        prog.append(Store(
            acc=acc, tokens=tb, words=_ceil(n_rows * OUT_BYTES, p.port_bytes),
            dram=plan.y_base + t0 * plan.y_row_words + i * plan.tile_out_words,
            stride=plan.y_row_words, pop_prev=1, push_prev=int(ti + acc_slots < len(tiles))))
    if halt:
        prog.append(Halt())
    return prog


def pack_words(byte_rows: np.ndarray, port_bytes: int) -> np.ndarray:
    """Pad rows of bytes to whole words: (rows, b) uint8 -> (rows, words, port_bytes)."""
    rows, b = byte_rows.shape
    words = _ceil(b, port_bytes)
    out = np.zeros((rows, words * port_bytes), np.uint8)
    out[:, :b] = byte_rows
    return out.reshape(rows, words, port_bytes)


def pack_weight_image(plan: Plan, w_t: np.ndarray) -> np.ndarray:
    """The weight region as uint8 (w_words, port_bytes): one word per (row tile, column), or
    with N:M two words per (row tile, group, slot).

    N:M raises ValueError (from `sim.golden.nm_encode`) if a row and group holds more than N
    non-zero weights.
    """
    from sim.golden import pack_trits  # sim is the home of the numerics
    p = plan.params
    if w_t.shape != (plan.n, plan.k):
        raise ValueError(f"weights have shape {w_t.shape}, the plan expects {(plan.n, plan.k)}")
    if plan.nm:
        return _pack_nm(plan, w_t)
    rows = plan.n_tiles * plan.rows_per_tile
    padded = np.zeros((rows, plan.k), np.int8)
    padded[:plan.n] = w_t
    # (tile, row-in-tile, k) -> (tile, k, row-in-tile): one word holds one column of a tile.
    cols = padded.reshape(plan.n_tiles, plan.rows_per_tile, plan.k).transpose(0, 2, 1)
    flat = pack_trits(np.ascontiguousarray(cols).reshape(-1), plan.encoding)
    return flat.reshape(plan.n_tiles * plan.k, -1)[:, :p.port_bytes]


def _pack_nm(plan: Plan, w_t: np.ndarray) -> np.ndarray:
    from sim.golden import nm_encode
    p = plan.params
    codes = nm_encode(w_t, plan.nm)                                   # (n, groups, N)
    full = np.full((plan.n_tiles * plan.rows_per_tile,) + codes.shape[1:], NM_EMPTY, np.uint8)
    full[:plan.n] = codes                                             # padding rows: empty
    # (tile, lane, group, slot) -> (tile, group, slot, half, byte, nibble): lane h*2P + 2b + s
    # of a tile is nibble s of byte b of word h.
    lanes = full.reshape(plan.n_tiles, plan.rows_per_tile, plan.nm_groups, plan.nm)
    lanes = lanes.transpose(0, 2, 3, 1).reshape(-1, NM_WORDS_PER_ROW, p.port_bytes,
                                                NM_SLOTS_PER_BYTE)
    words = np.zeros(lanes.shape[:3], np.uint8)
    for s in range(NM_SLOTS_PER_BYTE):
        words |= lanes[..., s] << np.uint8(s * NM_SLOT_BITS)
    return words.reshape(-1, p.port_bytes)


def pack_activation_image(plan: Plan, x_q: np.ndarray) -> np.ndarray:
    """The activation region as uint8 (x_words, port_bytes), token groups interleaved."""
    p = plan.params
    if x_q.shape != (plan.tokens, plan.k) or x_q.dtype != np.int8:
        raise ValueError(f"activations must be int8 of shape {(plan.tokens, plan.k)}, "
                         f"got {x_q.dtype} {x_q.shape}")
    lt = p.token_lanes
    padded = np.zeros((plan.groups * lt, plan.k), np.int8)
    padded[:plan.tokens] = x_q
    inter = padded.reshape(plan.groups, lt, plan.k).transpose(0, 2, 1).reshape(plan.groups, -1)
    return pack_words(inter.view(np.uint8), p.port_bytes).reshape(-1, p.port_bytes)


def unpack_results(plan: Plan, y_image: np.ndarray) -> np.ndarray:
    """Read int32 results (tokens, n) out of the result region (y_words, port_bytes) uint8."""
    raw = np.ascontiguousarray(y_image, np.uint8).reshape(plan.tokens, -1)
    return raw.view("<i4")[:, :plan.n].astype(np.int32)


def unpack_weight_image(plan: Plan, image: np.ndarray) -> np.ndarray:
    """Recover the (n, k) ternary matrix from its weight image (the inverse of packing).

    N:M images decode as the hardware does (`sim.golden.nm_decode`); weights a non-canonical
    image puts in the zero-padded columns past k are dropped (they meet zero activations).
    """
    from sim.golden import nm_decode, unpack_trits
    if plan.nm:
        p = plan.params
        words = np.ascontiguousarray(image, np.uint8).reshape(-1, p.port_bytes)
        if len(words) != plan.w_words:
            raise ValueError(f"weight image has {len(words)} words, the plan expects "
                             f"{plan.w_words}")
        nibbles = np.stack([(words >> np.uint8(s * NM_SLOT_BITS)) & np.uint8(
            (1 << NM_SLOT_BITS) - 1) for s in range(NM_SLOTS_PER_BYTE)], axis=-1)
        codes = nibbles.reshape(plan.n_tiles, plan.nm_groups, plan.nm, plan.rows_per_tile)
        codes = codes.transpose(0, 3, 1, 2).reshape(-1, plan.nm_groups, plan.nm)
        return np.ascontiguousarray(nm_decode(codes[:plan.n])[:, :plan.k])
    words = np.ascontiguousarray(image, np.uint8).reshape(plan.n_tiles * plan.k, -1)
    trits = unpack_trits(words.reshape(-1), plan.encoding,
                         plan.n_tiles * plan.k * plan.rows_per_tile)
    cols = trits.reshape(plan.n_tiles, plan.k, plan.rows_per_tile).transpose(0, 2, 1)
    return np.ascontiguousarray(cols.reshape(-1, plan.k)[:plan.n])
