"""The decoder-only transformer (Llama-3 and Qwen2) as Flax NNX modules, with named hook sites.

Hook sites per layer, in execution order:
  resid_pre  -> attention -> resid_mid (= resid_pre + attn_out) -> MLP -> mlp_out
  resid_post (= resid_mid + mlp_out), which is the next layer's resid_pre and HF `hidden_states[L+1]`.
A `Hooks` value names sites to capture and sites to transform (any jittable `x -> x`). The model knows
nothing about SAEs: activation collection captures a site, steering transforms one.
"""

import dataclasses
import math
from typing import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from sae_jax.models.config import ModelConfig

SITES = ("resid_pre", "resid_mid", "mlp_out", "resid_post")


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Which (layer, site) pairs to capture, and which to replace by `transform(x)` (applied before capture)."""

  capture: frozenset[tuple[int, str]] = frozenset()
  transforms: Mapping[tuple[int, str], Callable[[jax.Array], jax.Array]] = dataclasses.field(
      default_factory=dict)

  def __post_init__(self):
    for _, site in list(self.capture) + list(self.transforms):
      if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}: expected one of {SITES}")

  def apply(self, layer: int, site: str, x: jax.Array, captured: dict) -> jax.Array:
    fn = self.transforms.get((layer, site))
    if fn is not None:
      x = fn(x).astype(x.dtype)
    if (layer, site) in self.capture:
      captured[(layer, site)] = x
    return x

  def last_layer_needed(self) -> int:
    return max(layer for layer, _ in list(self.capture) + list(self.transforms))


@flax.struct.dataclass
class KVCache:
  """Per-layer keys/values [B, kv_heads, S, head_dim], which slots hold real tokens, and where each row writes.

  Heads lead the sequence so attention reads the cache as stored (a [B, S, heads, D] cache is transposed,
  i.e. copied whole, by every layer of every decode step).

  Every row has its own write offset, so rows of one batch can hold sequences of different lengths (the
  continuous-batching engine refills one row while the others keep decoding). A token's RoPE position is the
  number of valid slots before it, so padding inside a row costs slots but never shifts positions.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  valid: jax.Array  # [B, S] bool
  offset: jax.Array  # [B] int32: the next tokens of row b are written at slots [offset[b], offset[b] + T)

  AXES = ("batch", "kv_heads", "seq", None)  # logical axes of k and v (models/sharding.py's rules)

  @staticmethod
  def kv_shape(cfg: ModelConfig, batch: int, max_len: int) -> tuple[int, int, int, int]:
    return (batch, cfg.num_kv_heads, max_len, cfg.head_dim)

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, max_len: int, dtype) -> "KVCache":
    shape = cls.kv_shape(cfg, batch, max_len)
    return cls(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        valid=jnp.zeros((batch, max_len), bool),
        offset=jnp.zeros((batch,), jnp.int32),
    )


def write_rows(buffer: jax.Array, update: jax.Array, offsets: jax.Array, axis: int = 1) -> jax.Array:
  """buffer [B, ..., S, ...] with update [B, ..., T, ...] written at slot offsets[b] of `axis` in each row b."""
  return jax.vmap(lambda buf, upd, o: jax.lax.dynamic_update_slice_in_dim(buf, upd, o, axis=axis - 1))(
      buffer, update, offsets)


SPAN_MIN = 128  # the shortest key span a decode step attends over


def key_spans(max_len: int) -> tuple[int, ...]:
  """Key spans a decode step may attend over: powers of two from SPAN_MIN, then the whole cache."""
  spans, s = [], SPAN_MIN
  while s < max_len:
    spans.append(s)
    s *= 2
  return tuple(spans) + (max_len,)


@flax.struct.dataclass
class ForwardOutput:
  logits: jax.Array | None  # [B, T, vocab]; None when the forward stopped early
  captured: dict  # {(layer, site): [B, T, d]}
  cache: KVCache | None


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """RoPE inverse frequencies in float32, with Llama-3 NTK-by-parts scaling when configured."""
  exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta**exponents)
  s = cfg.rope_scaling
  if s is None:
    return inv_freq
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """x: [B, T, heads, head_dim]; rotate-half convention of HF (not llama.cpp's interleaved one)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
  emb = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, dtype, *, rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), dtype))

  def __call__(self, x):
    # As HF: normalise in float32, cast back, then scale by the weight in the model dtype.
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.weight[...] * xf.astype(x.dtype)


def _dot_general_f32_acc(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                         **kwargs):
  """`lax.dot_general` accumulating in float32, rounded once to the inputs' dtype (a no-op change in f32).

  On XLA CPU a bf16 x bf16 -> f32 dot runs on the native bf16 dot-product kernels at ~2x the speed of a
  bf16 -> bf16 one; it is also what torch does (f32 accumulation, one rounding).
  """
  del preferred_element_type
  out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                            preferred_element_type=jnp.float32, **kwargs)
  return out.astype(jnp.result_type(lhs, rhs))


def _linear(cfg_dtype, precision, rngs, din, dout, bias=False, f32_accumulate=False):
  extra = {"dot_general": _dot_general_f32_acc} if f32_accumulate else {}
  return nnx.Linear(din, dout, use_bias=bias, dtype=cfg_dtype, param_dtype=cfg_dtype,
                    precision=precision, rngs=rngs, **extra)


def _causal_query_chunk(t: int) -> int:
  """Query rows per block of the cache-free causal attention: at most 8 blocks, each >= 128 rows.

  Block i only computes scores against keys [0, end of block i), skipping the all-masked upper-right
  blocks: ~(n + 1) / 2n of the full [T, T] work for n blocks (62% at T=512).
  """
  return max(128, -(-t // (8 * 128)) * 128)


def _attend(q, k, v, mask, scale, precision):
  """Grouped-query attention core in a batch-leading layout (XLA CPU's dot kernels want that).

  q [B, Kv, G, T, D]; k, v [B, Kv, S, D]; mask [B, T, S] -> out [B, Kv, G, T, D] in q's dtype.
  Scores and softmax in float32; probabilities are cast to the model dtype (q's) as HF does.
  """
  b, kv, g, t, d = q.shape
  s = k.shape[2]
  if math.log2(scale).is_integer():  # a power of two: exact on q in any dtype, saves a pass over scores
    q, scale = q * jnp.asarray(scale, q.dtype), None
  scores = jax.lax.dot_general(q.reshape(b, kv, g * t, d), k, (((3,), (3,)), ((0, 1), (0, 1))),
                               precision=precision, preferred_element_type=jnp.float32)
  if scale is not None:
    scores = scores * scale
  scores = jnp.where(mask[:, None, None], scores.reshape(b, kv, g, t, s), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(b, kv, g * t, s)
  out = jax.lax.dot_general(probs, v, (((3,), (2,)), ((0, 1), (0, 1))), precision=precision,
                            preferred_element_type=jnp.float32).astype(q.dtype)
  return out.reshape(b, kv, g, t, d)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, precision, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, hd = cfg.hidden_size, cfg.head_dim
    self.q_proj = _linear(dtype, precision, rngs, d, cfg.num_heads * hd, cfg.qkv_bias, f32_accumulate=True)
    self.k_proj = _linear(dtype, precision, rngs, d, cfg.num_kv_heads * hd, cfg.qkv_bias, f32_accumulate=True)
    self.v_proj = _linear(dtype, precision, rngs, d, cfg.num_kv_heads * hd, cfg.qkv_bias, f32_accumulate=True)
    self.o_proj = _linear(dtype, precision, rngs, cfg.num_heads * hd, d, cfg.o_bias,
                          f32_accumulate=True)
    self.precision = precision

  def __call__(self, x, positions, inv_freq, key_valid, kv_cache, cache_offset):
    """key_valid: [B, S] for the keys attended to; kv_cache: (k, v) of this layer or None."""
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    query_slot = jnp.arange(t)
    kvh, groups, hd = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Kv, T, D]
    if kv_cache is not None:
      # A cache may store wider than the model dtype (f32 on CPU, where bf16 batched dots upcast the whole
      # cache every step); it holds the same model-dtype values either way.
      kh = write_rows(kv_cache[0], kh.astype(kv_cache[0].dtype), cache_offset, axis=2)
      vh = write_rows(kv_cache[1], vh.astype(kv_cache[1].dtype), cache_offset, axis=2)
      query_slot = query_slot[None, :] + cache_offset[:, None]  # [B, T]
    scale = 1 / math.sqrt(hd)
    qh = q.reshape(b, t, kvh, groups, hd).transpose(0, 2, 3, 1, 4)  # [B, Kv, G, T, D]
    if kv_cache is None:
      # Keys are the queries' own tokens: causal query blocks, each against the keys up to its end.
      chunk, blocks = _causal_query_chunk(t), []
      for start in range(0, t, chunk):
        end = min(start + chunk, t)
        causal = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        mask = causal[None] & key_valid[:, None, :end]  # [B, block, end]
        blocks.append(_attend(qh[:, :, :, start:end], kh[:, :, :end], vh[:, :, :end], mask, scale,
                              self.precision))
      out = jnp.concatenate(blocks, axis=3) if len(blocks) > 1 else blocks[0]
    else:
      key_slot = jnp.arange(kh.shape[2])
      mask = (key_slot[None, None, :] <= query_slot[:, :, None]) & key_valid[:, None, :]  # [B, T, S]
      spans = key_spans(kh.shape[2]) if t < kh.shape[2] else (kh.shape[2],)
      # Attend over the shortest span holding every row's keys: a decode step costs what the rows hold, not
      # the cache's length, and the branches live in one program (no compile per length).
      def upto(n):
        return lambda: _attend(qh, kh[:, :, :n], vh[:, :, :n], mask[:, :, :n], scale, self.precision)

      span = jnp.sum(jnp.max(query_slot) + 1 > jnp.asarray(spans[:-1], jnp.int32))
      out = jax.lax.switch(span, [upto(n) for n in spans])
    out = out.transpose(0, 3, 1, 2, 4)  # [B, T, Kv, G, D]
    out = self.o_proj(out.reshape(b, t, cfg.num_heads * cfg.head_dim))
    return out, ((kh, vh) if kv_cache is not None else None)


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, precision, *, rngs: nnx.Rngs):
    d, ff = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = _linear(dtype, precision, rngs, d, ff, f32_accumulate=True)
    self.up_proj = _linear(dtype, precision, rngs, d, ff, f32_accumulate=True)
    self.down_proj = _linear(dtype, precision, rngs, ff, d, f32_accumulate=True)

  def __call__(self, x):
    # SiLU in float32 with one rounding, as torch's bf16 kernel (a bf16 jax.nn.silu rounds every step).
    gate = self.gate_proj(x)
    act = jax.nn.silu(gate.astype(jnp.float32)).astype(gate.dtype)
    return self.down_proj(act * self.up_proj(x))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, precision, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs=rngs)
    self.self_attn = Attention(cfg, dtype, precision, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs=rngs)
    self.mlp = MLP(cfg, dtype, precision, rngs=rngs)


class Transformer(nnx.Module):
  """Llama / Qwen2 causal LM. Parameter names follow HF's so the loader's mapping stays obvious."""

  def __init__(self, cfg: ModelConfig, dtype=jnp.bfloat16, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    # f32 means "parity": ask for true f32 matmuls (TPUs default to bf16 passes otherwise).
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    self.precision = precision
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=dtype,
                                  rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, dtype, precision, rngs=rngs)
                            for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = _linear(dtype, precision, rngs, cfg.hidden_size, cfg.vocab_size, f32_accumulate=True)

  def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None, cache: KVCache | None = None,
               hooks: Hooks | None = None, stop_after_layer: int | None = None,
               logits_at: jax.Array | None = None) -> ForwardOutput:
    """tokens [B, T]. attention_mask [B, T] marks real tokens (left or right padding both work).

    positions default to the count of real tokens before each one. With `cache`, row b's T tokens are written at
    slots [cache.offset[b], cache.offset[b] + T) and attend to every valid earlier slot. `stop_after_layer=L` runs
    layers 0..L only and returns no logits (the activation collector's truncated forward). `logits_at` [B] gives
    logits [B, 1, V] at one position per row only (a prefill needs no more; the unembedding of a 64-token prompt
    is a fifth of its FLOPs on a small model).
    """
    cfg, hooks = self.cfg, hooks or Hooks()
    b, t = tokens.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), bool)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
      positions = jnp.cumsum(attention_mask, axis=1) - 1
      if cache is not None:
        positions = positions + jnp.sum(cache.valid, axis=1, keepdims=True)
      positions = jnp.maximum(positions, 0)
    if cache is not None:
      key_valid = write_rows(cache.valid, attention_mask, cache.offset)
    else:
      key_valid = attention_mask
    inv_freq = rope_inv_freq(cfg)
    last = cfg.num_layers - 1 if stop_after_layer is None else stop_after_layer

    captured = {}
    new_k, new_v = [], []
    x = self.embed_tokens(tokens)
    for i in range(last + 1):
      layer = self.layers[i]
      x = hooks.apply(i, "resid_pre", x, captured)
      layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
      attn, kv = layer.self_attn(layer.input_layernorm(x), positions, inv_freq, key_valid, layer_cache,
                                 None if cache is None else cache.offset)
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
      x = hooks.apply(i, "resid_mid", x + attn, captured)
      mlp_out = hooks.apply(i, "mlp_out", layer.mlp(layer.post_attention_layernorm(x)), captured)
      x = hooks.apply(i, "resid_post", x + mlp_out, captured)

    if stop_after_layer is not None:
      return ForwardOutput(logits=None, captured=captured, cache=None)
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)
    x = self.norm(x)
    if cfg.tie_word_embeddings:
      logits = _dot_general_f32_acc(x, self.embed_tokens.embedding[...], (((2,), (1,)), ((), ())),
                                    precision=self.precision)
    else:
      logits = self.lm_head(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid=key_valid, offset=cache.offset + t)
    return ForwardOutput(logits=logits, captured=captured, cache=new_cache)
