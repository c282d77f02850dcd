// File: leaf tensor operations of the SANA-WM Stage-1 transformer (worker/models/sana/).
//
// Depends on LibTorch and the C++ standard library only. Internal to the port: the transformer
// (transformer.cc, blocks.cc) is built from these; tests may use them directly.
//
// Every function reproduces one operation of the diffusers reference
// (`transformer_sana_wm.py`, see ../shared/golden/sana-wm-tiny/README.md §1) including its
// precision choices, noted per function. Compiles against LibTorch 1.13 and 2.x: the only
// version-dependent piece is the softmax attention (ScaledDotProductAttention).
#ifndef WMSERVE_WORKER_MODELS_SANA_OPS_H_
#define WMSERVE_WORKER_MODELS_SANA_OPS_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

namespace wmserve::worker::sana {

// `RMSNorm.forward`: (w * (x * rsqrt(mean(x^2, -1) + eps))).to(x.dtype), the normalisation in
// float32 (float64 for float64 input) whatever x's dtype.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// `nn.LayerNorm(C, elementwise_affine=False)` over the last dimension, in x's dtype.
at::Tensor LayerNormNoAffine(const at::Tensor& x, double eps);

// `t2i_modulate`: x * (1 + scale) + shift.
at::Tensor Modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);

// The sinusoidal timestep embedding (`TimestepEmbedder.timestep_embedding`): t (M,) -> (M, dim),
// [cos, sin], freqs = exp(-ln(max_period) * i / (dim/2)), all in float32 as the reference.
at::Tensor TimestepSinusoid(const at::Tensor& t, int64_t dim, double max_period);

// --- RoPE ------------------------------------------------------------------------------------

// A rotary table: angle cosines and sines per token and complex pair, (N, P) each.
struct RopeTable {
  // (N, P), or (B, 1, N, P) when the samples of a batch sit at different positions (co-batched
  // streaming chunks of rollouts at different frame offsets); the apply functions broadcast it
  // over x's (B, heads, ...) leading dims.
  at::Tensor cos;
  at::Tensor sin;
  int64_t pairs() const { return cos.size(-1); }
  int64_t tokens() const { return cos.size(-2); }
  // Complex pairs `indices` of every token (the camera branch's re-slice).
  RopeTable Select(const std::vector<int64_t>& indices) const;
  // (N, P, 2) = [cos, sin], the layout of the golden `inter.rope_freqs`.
  at::Tensor Stacked() const;
};

// Wan 3D RoPE (`WanRotaryPosEmbed`) for a head of `head_dim` dims over a (frames, height, width)
// token grid, tokens ordered (t, h, w); frame positions start at `first_frame` (0 for the
// bidirectional model; absolute frame indices for `casual_wan_rope`). Per axis with d dims:
// freqs = 1 / theta^(2i/d) and angle = pos * freq in float32, cos/sin correctly rounded to
// float32 (a complex64 table, golden README §5.6; bit-identical to `inter.rope_freqs`). The rotation itself runs in float64 (ApplyRope*), as the
// reference's multiply of float64 features with the table.
RopeTable WanRopeTable(int64_t head_dim, int64_t frames, int64_t height, int64_t width,
                       double theta, int64_t first_frame = 0, c10::Device device = c10::kCPU);

// One WanRopeTable per sample, frame positions starting at first_frames[b]: (B, 1, N, P).
RopeTable BatchedWanRopeTable(int64_t head_dim, int64_t frames, int64_t height, int64_t width,
                              double theta, const std::vector<int64_t>& first_frames,
                              c10::Device device = c10::kCPU);

// Rotates interleaved pairs (x[..., 2i], x[..., 2i+1]) of the LAST dimension of x (..., N, 2P)
// by the table (N, P) — the conjugate rotation when `inverse`. Computed in float64, returned in
// x's dtype (`_apply_complex_rope`).
at::Tensor ApplyRopeLastDim(const at::Tensor& x, const RopeTable& table, bool inverse = false);

// The same on the reference's (B, H, D, N) layout: pairs along D (`_apply_rotary_emb`).
at::Tensor ApplyRopeHeadsFirst(const at::Tensor& x, const RopeTable& table);

// "[2, 3, 4]" ("undefined" for an undefined tensor), for error messages.
std::string ShapeOf(const at::Tensor& t);

// A private generator of `device`'s type seeded with `seed`: a reseeded clone of the default
// one, so draws neither depend on nor disturb the process's global RNG state. Deterministic per
// (seed, device type). The sampling kernels lock it themselves.
at::Generator SeededGenerator(c10::Device device, uint64_t seed);

// The seed of tensor `name` in a model seeded with `seed` (FNV-1a of the name, mixed by the
// splitmix64 finaliser): dummy weights depend on (seed, name) only, not on the load order.
uint64_t TensorSeed(uint64_t seed, const std::string& name);

// Stores a loaded parameter: in place when its slot is already a view into a fused buffer
// (q/k/v projections kept as one GEMM's weight), otherwise by taking the tensor.
void StoreParameter(at::Tensor* slot, at::Tensor value);

// --- attention -------------------------------------------------------------------------------

// softmax(q k^T / sqrt(D) + mask) v with q (..., Nq, D), k/v (..., Nk, D) and an optional
// additive mask broadcastable to (..., Nq, Nk). The scale is always the default 1/sqrt(D) of
// `F.scaled_dot_product_attention` (the callers reproduce the reference's scales by padding D).
// LibTorch >= 2: at::scaled_dot_product_attention. LibTorch 1.x: matmul + softmax in chunks of
// queries (bounded memory), in q's dtype for float32/float64; bf16/fp16 inputs are attended like
// LibTorch 2's CPU kernel (float32 scores and sums, probabilities rounded to the input dtype,
// output in the input dtype).
at::Tensor ScaledDotProductAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask = {});

// --- convolutions ----------------------------------------------------------------------------

// `BidirectionalGDN._apply_temporal_short_conv` with FLA's causal depthwise ShortConvolution
// (kernel K, weight (C, 1, K), no bias, no activation) along T, tokens (B, T*S, C):
//   y = conv(x) + flip(conv(flip(x))) - w[:, 0, K-1] * x,
// a symmetric (2K-1)-tap filter counting the centre tap once. In x's dtype.
at::Tensor BidirectionalShortConv(const at::Tensor& x, const at::Tensor& weight, int64_t frames);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_OPS_H_
