// The LTX-2.0 VAE primitives (see vae_ops.h; ltx2-spec §1.3).
#include "worker/models/ltx2/vae_ops.h"

#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/conv3d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/silu.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <vector>

namespace wmserve::worker::ltx2 {
namespace {

// Every LTX-2.0 conv is 3x3x3 (ltx2-spec §1.9): 2 frames of temporal context, 1 pixel of
// spatial padding.
constexpr int64_t kKernel = 3;
constexpr int64_t kTemporalContext = kKernel - 1;

void CheckVideo(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.defined() && x.dim() == 5, what, ": expected a (B, C, T, H, W) tensor, got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
}

void CheckConv(const at::Tensor& x, const ConvParams& conv) {
  TORCH_CHECK(conv.weight.defined() && conv.weight.dim() == 5 && conv.weight.size(2) == kKernel &&
                  conv.weight.size(3) == kKernel && conv.weight.size(4) == kKernel,
              "CausalConv3d: expected a (C_out, C_in, 3, 3, 3) weight");
  TORCH_CHECK(conv.weight.size(1) == x.size(1), "CausalConv3d: input has ", x.size(1),
              " channels, the weight expects ", conv.weight.size(1));
}

// Mirrors the 1-pixel border of the last two dims from the interior, PyTorch reflect semantics
// (row -1 := row 1, row H := row H-2), rows first so that the column pass fills the corners.
void FillReflectBorder(const at::Tensor& padded) {
  const int64_t hp = padded.size(-2), wp = padded.size(-1);
  const int64_t w = wp - 2;
  padded.narrow(-2, 0, 1).narrow(-1, 1, w).copy_(padded.narrow(-2, 2, 1).narrow(-1, 1, w));
  padded.narrow(-2, hp - 1, 1)
      .narrow(-1, 1, w)
      .copy_(padded.narrow(-2, hp - 3, 1).narrow(-1, 1, w));
  padded.narrow(-1, 0, 1).copy_(padded.narrow(-1, 2, 1));
  padded.narrow(-1, wp - 1, 1).copy_(padded.narrow(-1, wp - 3, 1));
}

// A 1-pixel reflect pad of the last two dims (at::reflection_pad2d has no bf16 CPU kernel in
// LibTorch 1.13; this copy-based version works for every dtype and device).
at::Tensor ReflectPad1(const at::Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  const int64_t h = shape[shape.size() - 2], w = shape.back();
  shape[shape.size() - 2] += 2;
  shape.back() += 2;
  at::Tensor padded = at::empty(shape, x.options());
  padded.narrow(-2, 1, h).narrow(-1, 1, w).copy_(x);
  FillReflectBorder(padded);
  return padded;
}

// The conv input in one allocation: [left context, x, right context] along T and, for reflect,
// the mirrored border in H and W. `context` (the streaming cache) supplies the left frames when
// defined; otherwise the first frame is replicated `left` times. The right context replicates
// the last frame (non-causal only).
at::Tensor PaddedInput(const at::Tensor& x, const at::Tensor& context, int64_t left, int64_t right,
                       bool reflect) {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t border = reflect ? 1 : 0;
  at::Tensor padded =
      at::empty({b, c, left + t + right, h + 2 * border, w + 2 * border}, x.options());
  const at::Tensor interior = reflect ? padded.narrow(3, 1, h).narrow(4, 1, w) : padded;
  if (context.defined()) {
    interior.narrow(2, 0, left).copy_(context);
  } else if (left > 0) {
    interior.narrow(2, 0, left).copy_(x.narrow(2, 0, 1).expand({b, c, left, h, w}));
  }
  interior.narrow(2, left, t).copy_(x);
  if (right > 0) {
    interior.narrow(2, left + t, right).copy_(x.narrow(2, t - 1, 1).expand({b, c, right, h, w}));
  }
  if (reflect) FillReflectBorder(padded);
  return padded;
}

// 1 / sqrt(mean_c(x^2) + eps), (B, 1, T, H, W), in x's dtype. The sum of squares is accumulated
// in float32 (float64 for float64) without materialising x^2.
at::Tensor InverseRms(const at::Tensor& x, double eps) {
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor norm = at::linalg_vector_norm(x, 2, at::IntArrayRef{1}, /*keepdim=*/true,
                                           c10::optional<at::ScalarType>(acc));
  norm.mul_(norm).div_(static_cast<double>(x.size(1))).add_(eps).rsqrt_();
  return norm.to(x.scalar_type());
}

}  // namespace

at::Tensor PixelNorm(const at::Tensor& x, double eps) {
  CheckVideo(x, "PixelNorm");
  return at::mul(x, InverseRms(x, eps));
}

at::Tensor PixelNormSilu(const at::Tensor& x, double eps, bool x_is_scratch) {
  CheckVideo(x, "PixelNormSilu");
  const at::Tensor inv = InverseRms(x, eps);
  at::Tensor y = x_is_scratch ? x.mul_(inv) : at::mul(x, inv);
  return at::silu_(y);
}

at::Tensor CausalConv3d(const at::Tensor& x, const ConvParams& conv, TemporalPadding time,
                        SpatialPadding space, at::Tensor* cache) {
  CheckVideo(x, "CausalConv3d");
  CheckConv(x, conv);
  TORCH_CHECK(cache == nullptr || time == TemporalPadding::kCausal,
              "CausalConv3d: a streaming cache needs causal padding");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const bool reflect = space == SpatialPadding::kReflect;
  TORCH_CHECK(t >= 1, "CausalConv3d: no frames");
  TORCH_CHECK(!reflect || (h >= 2 && w >= 2), "CausalConv3d: reflect padding needs H, W >= 2, got ",
              h, "x", w);
  const bool has_context = cache != nullptr && cache->defined();
  if (has_context) {
    TORCH_CHECK(
        cache->dim() == 5 && cache->size(0) == b && cache->size(1) == c &&
            cache->size(2) == kTemporalContext && cache->size(3) == h && cache->size(4) == w,
        "CausalConv3d: the cached frames ", cache->sizes(), " do not fit the input ", x.sizes());
  }

  if (t == 1 && !has_context) {
    // Every temporal window is [x0, x0, x0]: fold the temporal taps (ltx2-spec §1.11).
    const at::Tensor frame = x.select(2, 0);
    const at::Tensor weight2d = conv.weight.sum(2);
    const at::Tensor y =
        reflect ? at::conv2d(ReflectPad1(frame), weight2d, conv.bias)
                : at::conv2d(frame, weight2d, conv.bias, /*stride=*/1, /*padding=*/1);
    if (cache != nullptr) *cache = x.expand({b, c, kTemporalContext, h, w}).contiguous();
    return y.unsqueeze(2);
  }

  const bool causal = time == TemporalPadding::kCausal;
  const int64_t left = causal ? kTemporalContext : kTemporalContext / 2;
  const int64_t right = causal ? 0 : kTemporalContext / 2;
  const at::Tensor padded =
      PaddedInput(x, has_context ? *cache : at::Tensor(), left, right, reflect);
  at::Tensor y = reflect ? at::conv3d(padded, conv.weight, conv.bias)
                         : at::conv3d(padded, conv.weight, conv.bias, /*stride=*/{1, 1, 1},
                                      /*padding=*/{0, 1, 1});
  if (cache != nullptr) {
    // The last 2 frames of [left context, x] (ltx2-spec §1.8).
    if (t >= kTemporalContext) {
      // A copy, never a view: x may be modified in place by the caller afterwards.
      *cache =
          x.narrow(2, t - kTemporalContext, kTemporalContext).clone(at::MemoryFormat::Contiguous);
    } else {
      const at::Tensor previous =
          has_context ? cache->narrow(2, kTemporalContext - 1, 1) : x.narrow(2, 0, 1);
      *cache = at::cat({previous, x}, 2);
    }
  }
  return y;
}

at::Tensor Patchify(const at::Tensor& x, int64_t p) {
  CheckVideo(x, "Patchify");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  TORCH_CHECK(h % p == 0 && w % p == 0, "Patchify: ", h, "x", w, " is not divisible by ", p);
  // (B, C, T, h, j_h, w, j_w) -> (B, C, j_w, j_h, T, h, w).
  return x.reshape({b, c, t, h / p, p, w / p, p})
      .permute({0, 1, 6, 4, 2, 3, 5})
      .reshape({b, c * p * p, t, h / p, w / p});
}

at::Tensor Unpatchify(const at::Tensor& x, int64_t p) {
  CheckVideo(x, "Unpatchify");
  const int64_t b = x.size(0), cp = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  TORCH_CHECK(cp % (p * p) == 0, "Unpatchify: ", cp, " channels are not divisible by ", p * p);
  // (B, C, j_w, j_h, T, h, w) -> (B, C, T, h, j_h, w, j_w).
  return x.reshape({b, cp / (p * p), p, p, t, h, w})
      .permute({0, 1, 4, 5, 3, 6, 2})
      .reshape({b, cp / (p * p), t, h * p, w * p});
}

at::Tensor SpaceToDepth(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  CheckVideo(x, "SpaceToDepth");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  TORCH_CHECK(t % s[0] == 0 && h % s[1] == 0 && w % s[2] == 0, "SpaceToDepth: ", x.sizes(),
              " is not divisible by the stride (", s[0], ", ", s[1], ", ", s[2], ")");
  return x.reshape({b, c, t / s[0], s[0], h / s[1], s[1], w / s[2], s[2]})
      .permute({0, 1, 3, 5, 7, 2, 4, 6})
      .reshape({b, c * s[0] * s[1] * s[2], t / s[0], h / s[1], w / s[2]});
}

at::Tensor DepthToSpace(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  CheckVideo(x, "DepthToSpace");
  const int64_t b = x.size(0), cs = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t prod = s[0] * s[1] * s[2];
  TORCH_CHECK(cs % prod == 0, "DepthToSpace: ", cs, " channels are not divisible by ", prod);
  return x.reshape({b, cs / prod, s[0], s[1], s[2], t, h, w})
      .permute({0, 1, 5, 2, 6, 3, 7, 4})
      .reshape({b, cs / prod, t * s[0], h * s[1], w * s[2]});
}

at::Tensor ResnetBlock(const at::Tensor& x, const ConvParams& conv1, const ConvParams& conv2,
                       TemporalPadding time, SpatialPadding space, double eps, at::Tensor* cache1,
                       at::Tensor* cache2) {
  at::Tensor h = CausalConv3d(PixelNormSilu(x, eps), conv1, time, space, cache1);
  h = CausalConv3d(PixelNormSilu(h, eps, /*x_is_scratch=*/true), conv2, time, space, cache2);
  return h.add_(x);  // h is a fresh conv output
}

at::Tensor Downsample(const at::Tensor& x, const ConvParams& conv,
                      const std::array<int64_t, 3>& stride, int64_t out_channels,
                      TemporalPadding time, SpatialPadding space) {
  CheckVideo(x, "Downsample");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t st = stride[0];
  const int64_t prod = stride[0] * stride[1] * stride[2];
  TORCH_CHECK(out_channels > 0 && (c * prod) % out_channels == 0, "Downsample: ", c * prod,
              " space-to-depth channels do not split into ", out_channels, " groups");
  // ltx2-spec §1.3 P5 step 1: prepend the first st-1 frames; both paths see that sequence.
  at::Tensor sequence, main;
  if (st > 1 && t == 1) {
    // [x0, x0]: every conv window holds x0 only, so the conv runs once on x0 (the folded 2D
    // path) and both frames share its output.
    const at::Tensor y = CausalConv3d(x, conv, time, space);
    sequence = x.expand({b, c, st, h, w});
    main = y.expand({b, y.size(1), st, h, w});
  } else {
    sequence = st > 1 ? at::cat({x.narrow(2, 0, st - 1), x}, 2) : x;
    main = CausalConv3d(sequence, conv, time, space);
  }
  TORCH_CHECK(sequence.size(2) % st == 0, "Downsample: ", t,
              " frames do not fit a temporal stride of ", st, " (needs an odd count)");
  at::Tensor out = SpaceToDepth(main, stride);
  TORCH_CHECK(out.size(1) == out_channels, "Downsample: the conv gives ", out.size(1),
              " channels after space-to-depth, expected ", out_channels);
  at::Tensor residual = SpaceToDepth(sequence, stride);
  const int64_t group = c * prod / out_channels;
  if (group > 1) {
    residual =
        residual
            .view({b, out_channels, group, residual.size(2), residual.size(3), residual.size(4)})
            .mean(2);
  }
  // `out` is a fresh tensor; it can only be a broadcast view (not writable in place) on the
  // single-frame path, where `main` was expanded.
  return out.is_contiguous() ? out.add_(residual) : out.add(residual);
}

at::Tensor Upsample(const at::Tensor& x, const ConvParams& conv, int64_t factor, bool residual,
                    bool drop_first_frame, TemporalPadding time, SpatialPadding space,
                    at::Tensor* cache) {
  CheckVideo(x, "Upsample");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  TORCH_CHECK(factor > 0 && 8 % factor == 0 && c % 8 == 0, "Upsample: ", c,
              " channels with reduction factor ", factor, " are not supported");
  const at::Tensor y = CausalConv3d(x, conv, time, space, cache);
  const int64_t out_channels = c / factor;
  TORCH_CHECK(y.size(1) == 8 * out_channels, "Upsample: the conv gives ", y.size(1),
              " channels, expected ", 8 * out_channels);
  at::Tensor out;
  if (!residual) {
    out = DepthToSpace(y, {2, 2, 2});
  } else {
    // Main and tiled residual in one pass: output channel k = r*(C/8) + c' takes conv channels
    // 8k..8k+7 and residual (input) channels 8c'..8c'+7, so the tile is a broadcast over r.
    const int64_t tiles = 8 / factor, base = c / 8;
    const std::vector<int64_t> order = {0, 1, 2, 6, 3, 7, 4, 8, 5};
    const at::Tensor main9 = y.reshape({b, tiles, base, 2, 2, 2, t, h, w}).permute(order);
    const at::Tensor res9 = x.reshape({b, 1, base, 2, 2, 2, t, h, w}).permute(order);
    at::Tensor out9 = at::empty({b, tiles, base, t, 2, h, 2, w, 2}, y.options());
    at::add_out(out9, main9, res9);
    out = out9.view({b, out_channels, 2 * t, 2 * h, 2 * w});
  }
  return drop_first_frame ? out.narrow(2, 1, 2 * t - 1) : out;
}

}  // namespace wmserve::worker::ltx2
