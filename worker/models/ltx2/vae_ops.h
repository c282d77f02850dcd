// File: the primitive operations of the LTX-2.0 video VAE (ltx2-spec §1.3 P1-P6).
//
// Depends on LibTorch and the C++ standard library only. Internal to the VAE port (vae.cc builds
// the encoder and decoder from these); tests use them directly for the layout and residual
// invariants (ltx2-spec §5 invariants 6-8).
//
// Tensors are (B, C, T, H, W). Every op runs in its input's dtype on its input's device and
// leaves its inputs unchanged (PixelNormSilu's opt-in scratch mode aside). Results are fresh
// tensors, except that the pure layout ops (Patchify, Unpatchify, SpaceToDepth, DepthToSpace) may
// return a view of their input when no copy is needed. The caller holds the autograd guard
// (vae.cc does: NoGradGuard).
#ifndef WMSERVE_WORKER_MODELS_LTX2_VAE_OPS_H_
#define WMSERVE_WORKER_MODELS_LTX2_VAE_OPS_H_

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>

namespace wmserve::worker::ltx2 {

// Temporal padding of the 3x3x3 convs (ltx2-spec §1.3 P1): causal prepends two copies of the
// first frame; non-causal prepends one copy of the first and appends one of the last. Never zeros.
enum class TemporalPadding { kCausal, kNonCausal };

// Spatial padding of the convs: zeros in the encoder, reflect (PyTorch reflect: mirrors without
// repeating the edge) in the decoder.
enum class SpatialPadding { kZeros, kReflect };

// Weight (C_out, C_in, 3, 3, 3) and bias (C_out) of one `LTX2VideoCausalConv3d`.
struct ConvParams {
  at::Tensor weight;
  at::Tensor bias;
};

// P2: x / sqrt(mean_c(x^2) + eps), the mean over channels at every (b, t, h, w). The statistic is
// accumulated in float32 for reduced-precision inputs; the result is in x's dtype.
at::Tensor PixelNorm(const at::Tensor& x, double eps);

// SiLU(PixelNorm(x)), the pre-activation of every resnet conv and of conv_out. `x_is_scratch`
// lets it work in place when the caller no longer needs x (a fresh conv output).
at::Tensor PixelNormSilu(const at::Tensor& x, double eps, bool x_is_scratch = false);

// P1: a 3x3x3 stride-1 conv with the temporal padding `time` and the spatial padding `space`.
// Output T == input T.
//
// `cache` (causal only; may be null) makes it the streaming conv of ltx2-spec §1.8: when
// *cache holds frames (the last 2 input frames of the previous call, (B, C_in, 2, H, W)) they
// replace the replicated first frame as left context; afterwards *cache holds the last 2 frames
// of [left context, x], so one-frame calls carry the older cached frame forward. An undefined
// *cache means "first call" and pads like the one-call causal conv.
//
// With a single input frame and no cached context every temporal window holds the same frame
// (both padding modes), so the three temporal taps are summed into one 3x3 kernel and the conv
// runs in 2D: a third of the FLOPs, equal up to rounding (ltx2-spec §1.11). This covers the
// image encode and the first latent frame of a stream.
at::Tensor CausalConv3d(const at::Tensor& x, const ConvParams& conv, TemporalPadding time,
                        SpatialPadding space, at::Tensor* cache = nullptr);

// P4: (B, C, T, H, W) -> (B, C*p*p, T, H/p, W/p), channel c*p*p + p*j_w + j_h (the width offset
// before the height offset), as `LTX2VideoEncoder3d.forward` patchifies (patch_size_t == 1).
at::Tensor Patchify(const at::Tensor& x, int64_t p);
// The exact inverse of Patchify.
at::Tensor Unpatchify(const at::Tensor& x, int64_t p);

// P5 layout: (B, C, T, H, W) -> (B, C*st*sh*sw, T/st, H/sh, W/sw), channel
// ((c*st + i_t)*sh + i_h)*sw + i_w.
at::Tensor SpaceToDepth(const at::Tensor& x, const std::array<int64_t, 3>& stride);
// P6 layout, the inverse: channel ((c*st + i_t)*sh + i_h)*sw + i_w -> (c, st*t + i_t, ...).
at::Tensor DepthToSpace(const at::Tensor& x, const std::array<int64_t, 3>& stride);

// P3: x + conv2(SiLU(PixelNorm(conv1(SiLU(PixelNorm(x)))))), C -> C. `cache1`/`cache2` are the
// two convs' streaming caches (see CausalConv3d; null outside streaming).
at::Tensor ResnetBlock(const at::Tensor& x, const ConvParams& conv1, const ConvParams& conv2,
                       TemporalPadding time, SpatialPadding space, double eps,
                       at::Tensor* cache1 = nullptr, at::Tensor* cache2 = nullptr);

// P5 (`LTX2VideoDownsampler3d`): C_in -> `out_channels` with `stride` (t, h, w). A temporal stride
// of 2 first prepends frame 0 (T -> T+1; T must then be odd). Output = SpaceToDepth(conv(x))
// + the group mean of SpaceToDepth(x) over consecutive groups of C_in*prod/out_channels channels.
at::Tensor Downsample(const at::Tensor& x, const ConvParams& conv,
                      const std::array<int64_t, 3>& stride, int64_t out_channels,
                      TemporalPadding time, SpatialPadding space);

// P6 (`LTX2VideoUpsampler3d`, stride (2,2,2), reduction `factor`): C_in -> C_in/factor channels
// at (2T, 2H, 2W). Main path DepthToSpace(conv(x)); with `residual`, plus DepthToSpace(x) tiled
// 8/factor times along channels (channel k of the tile is channel k mod C_in/8). When
// `drop_first_frame`, the first output frame of both paths is dropped (2T - 1 frames): always in
// one-call decodes, only on a stream's first call when streaming (ltx2-spec §1.8). `cache` as in
// CausalConv3d (the upsampler's conv).
at::Tensor Upsample(const at::Tensor& x, const ConvParams& conv, int64_t factor, bool residual,
                    bool drop_first_frame, TemporalPadding time, SpatialPadding space,
                    at::Tensor* cache = nullptr);

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_VAE_OPS_H_
