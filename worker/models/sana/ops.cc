// Leaf operations of the SANA-WM Stage-1 transformer (see ops.h).
#include "worker/models/sana/ops.h"

#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/conv1d.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/core/TensorOptions.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/scaled_dot_product_attention.h>
#endif

#include <algorithm>
#include <mutex>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace wmserve::worker::sana {
namespace {

[[noreturn]] void Fail(const char* fn, const std::string& message) {
  throw std::runtime_error(std::string(fn) + ": " + message);
}

// One axis of the Wan table: angles (positions, d/2) for positions [first, first + count).
at::Tensor AxisAngles(int64_t dim, int64_t first, int64_t count, double theta,
                      c10::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  // 1 / theta^(arange(0, d, 2) / d), float32 as get_1d_rotary_pos_embed.
  const at::Tensor exponents = at::arange(0, dim, 2, f32).narrow(0, 0, dim / 2).div(dim);
  const at::Tensor freqs = at::pow(theta, exponents).reciprocal();
  const at::Tensor pos = at::arange(first, first + count, f32);
  return at::outer(pos, freqs);
}

}  // namespace

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf.mul(at::rsqrt(xf.pow(2).mean({-1}, /*keepdim=*/true).add(eps)));
  return weight.mul(normed).to(x.scalar_type());
}

at::Tensor LayerNormNoAffine(const at::Tensor& x, double eps) {
  return at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
}

at::Tensor Modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return x.mul(scale.add(1.0)).add(shift);
}

at::Tensor TimestepSinusoid(const at::Tensor& t, int64_t dim, double max_period) {
  if (t.dim() != 1) Fail("TimestepSinusoid", "t has shape " + ShapeOf(t) + ", expected (M,)");
  const int64_t half = dim / 2;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(t.device());
  const at::Tensor freqs = at::arange(0, half, f32).mul(-std::log(max_period)).div(half).exp();
  const at::Tensor args = t.to(at::kFloat).unsqueeze(1).mul(freqs.unsqueeze(0));
  at::Tensor emb = at::cat({args.cos(), args.sin()}, -1);
  if (dim % 2) emb = at::cat({emb, at::zeros({t.size(0), 1}, f32)}, -1);
  return emb;
}

RopeTable RopeTable::Select(const std::vector<int64_t>& indices) const {
  std::vector<at::Tensor> c, s;
  for (const int64_t i : indices) {
    if (i < 0 || i >= pairs()) {
      Fail("RopeTable::Select", "pair " + std::to_string(i) + " outside [0, " +
                                    std::to_string(pairs()) + ")");
    }
    c.push_back(cos.narrow(-1, i, 1));
    s.push_back(sin.narrow(-1, i, 1));
  }
  return {at::cat(c, -1), at::cat(s, -1)};
}

at::Tensor RopeTable::Stacked() const { return at::stack({cos, sin}, -1); }

RopeTable WanRopeTable(int64_t head_dim, int64_t frames, int64_t height, int64_t width,
                       double theta, int64_t first_frame, c10::Device device) {
  if (head_dim <= 0 || head_dim % 2 || head_dim / 6 == 0) {
    Fail("WanRopeTable", "head_dim " + std::to_string(head_dim) + " has no Wan RoPE split");
  }
  if (frames < 1 || height < 1 || width < 1 || first_frame < 0) {
    Fail("WanRopeTable", "grid (" + std::to_string(frames) + ", " + std::to_string(height) +
                             ", " + std::to_string(width) + ") from frame " +
                             std::to_string(first_frame) + " is empty or negative");
  }
  const int64_t hw_dim = 2 * (head_dim / 6);
  const int64_t t_dim = head_dim - 2 * hw_dim;
  const at::Tensor t_ang = AxisAngles(t_dim, first_frame, frames, theta, device);  // (T, t/2)
  const at::Tensor h_ang = AxisAngles(hw_dim, 0, height, theta, device);           // (H, h/2)
  const at::Tensor w_ang = AxisAngles(hw_dim, 0, width, theta, device);            // (W, w/2)
  const int64_t pt = t_dim / 2, ph = hw_dim / 2;
  const at::Tensor angles = at::cat(
      {t_ang.view({frames, 1, 1, pt}).expand({frames, height, width, pt}),
       h_ang.view({1, height, 1, ph}).expand({frames, height, width, ph}),
       w_ang.view({1, 1, width, ph}).expand({frames, height, width, ph})},
      3);
  const at::Tensor flat = angles.reshape({frames * height * width, pt + 2 * ph});
  // torch.polar on float32 angles: cos/sin correctly rounded to float32 (computed in float64
  // here; bit-identical to the golden `inter.rope_freqs`).
  const at::Tensor fd = flat.to(at::kDouble);
  return {fd.cos().to(at::kFloat), fd.sin().to(at::kFloat)};
}

RopeTable BatchedWanRopeTable(int64_t head_dim, int64_t frames, int64_t height, int64_t width,
                              double theta, const std::vector<int64_t>& first_frames,
                              c10::Device device) {
  if (first_frames.empty()) Fail("BatchedWanRopeTable", "no samples");
  std::vector<at::Tensor> cos, sin;
  for (const int64_t first : first_frames) {
    const RopeTable t = WanRopeTable(head_dim, frames, height, width, theta, first, device);
    cos.push_back(t.cos.unsqueeze(0));
    sin.push_back(t.sin.unsqueeze(0));
  }
  return {at::stack(cos, 0), at::stack(sin, 0)};
}

at::Tensor ApplyRopeLastDim(const at::Tensor& x, const RopeTable& table, bool inverse) {
  constexpr const char* kFn = "ApplyRopeLastDim";
  const bool batched = table.cos.dim() == 4;
  if (x.dim() < 2 || x.size(-1) != 2 * table.pairs() || x.size(-2) != table.tokens() ||
      (batched && (x.dim() < 4 || x.size(0) != table.cos.size(0)))) {
    Fail(kFn, "x has shape " + ShapeOf(x) + ", expected (" + (batched ? "B, heads, " : "...") +
                  "N=" + std::to_string(table.tokens()) + ", " +
                  std::to_string(2 * table.pairs()) + ")");
  }
  std::vector<int64_t> pair_shape(x.sizes().begin(), x.sizes().end());
  pair_shape.back() = table.pairs();
  pair_shape.push_back(2);
  const at::Tensor xd = x.to(at::kDouble).reshape(pair_shape);
  const at::Tensor re = xd.select(-1, 0), im = xd.select(-1, 1);
  const at::Tensor c = table.cos.to(at::kDouble);
  at::Tensor s = table.sin.to(at::kDouble);
  if (inverse) s = s.neg();
  // (re + i im)(c + i s) = (re c - im s) + i (re s + im c)
  const at::Tensor out_re = re.mul(c).sub(im.mul(s));
  const at::Tensor out_im = re.mul(s).add(im.mul(c));
  return at::stack({out_re, out_im}, -1).flatten(-2).to(x.scalar_type());
}

at::Tensor ApplyRopeHeadsFirst(const at::Tensor& x, const RopeTable& table) {
  return ApplyRopeLastDim(x.transpose(-1, -2), table).transpose(-1, -2);
}

std::string ShapeOf(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

at::Generator SeededGenerator(c10::Device device, uint64_t seed) {
  at::Generator gen = at::globalContext().defaultGenerator(device).clone();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return gen;
}

uint64_t TensorSeed(uint64_t seed, const std::string& name) {
  auto mix = [](uint64_t x) {  // splitmix64 finaliser: decorrelates seeds a few bits apart
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  };
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char ch : name) {
    h ^= ch;
    h *= 0x100000001b3ULL;
  }
  return mix(seed ^ mix(h));
}

void StoreParameter(at::Tensor* slot, at::Tensor value) {
  if (slot->defined()) {
    slot->copy_(value);
  } else {
    *slot = std::move(value);
  }
}

at::Tensor ScaledDotProductAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask) {
  constexpr const char* kFn = "ScaledDotProductAttention";
  if (q.dim() < 2 || k.dim() != q.dim() || v.dim() != q.dim() || q.size(-1) != k.size(-1) ||
      k.size(-2) != v.size(-2)) {
    Fail(kFn, "q " + ShapeOf(q) + ", k " + ShapeOf(k) + ", v " + ShapeOf(v) +
                  " are not (..., Nq, D), (..., Nk, D), (..., Nk, Dv)");
  }
#if TORCH_VERSION_MAJOR >= 2
  if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask);
  return at::scaled_dot_product_attention(q, k, v);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const int64_t nq = q.size(-2), nk = k.size(-2);
  const int64_t batch = q.numel() / std::max<int64_t>(1, nq * q.size(-1));
  // Bound the (batch, chunk, Nk) score matrix to ~64 M elements.
  constexpr int64_t kMaxScores = int64_t{1} << 26;
  const int64_t chunk =
      std::max<int64_t>(1, std::min(nq, kMaxScores / std::max<int64_t>(1, batch * nk)));
  // Reduced-precision inputs (bf16/fp16) are attended like LibTorch 2's CPU flash kernel: scores,
  // exponentials and sums in float32, the probabilities rounded to the input dtype for the
  // P V product (accumulated in float32), the output rounded to the input dtype.
  const auto dtype = q.scalar_type();
  const bool reduced = dtype == at::kBFloat16 || dtype == at::kHalf;
  const at::Tensor kt = (reduced ? k.to(at::kFloat) : k).transpose(-1, -2);
  const at::Tensor vv = reduced ? v.to(at::kFloat) : v;
  auto attend = [&](const at::Tensor& qc, const at::Tensor& mc) {
    at::Tensor scores = at::matmul(reduced ? qc.to(at::kFloat) : qc, kt).mul(scale);
    if (mc.defined()) scores = scores.add(reduced ? mc.to(at::kFloat) : mc);
    if (!reduced) return at::matmul(at::softmax(scores, -1), vv);
    const at::Tensor e = scores.sub(std::get<0>(scores.max(-1, true))).exp();
    return at::matmul(e.to(dtype).to(at::kFloat), vv).div(e.sum({-1}, true)).to(dtype);
  };
  const bool mask_per_query = mask.defined() && mask.dim() >= 2 && mask.size(-2) == nq && nq > 1;
  if (chunk >= nq) return attend(q, mask);
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < nq; start += chunk) {
    const int64_t len = std::min(chunk, nq - start);
    parts.push_back(attend(q.narrow(-2, start, len),
                           mask_per_query ? mask.narrow(-2, start, len) : mask));
  }
  return at::cat(parts, -2);
#endif
}

at::Tensor BidirectionalShortConv(const at::Tensor& x, const at::Tensor& weight, int64_t frames) {
  constexpr const char* kFn = "BidirectionalShortConv";
  if (x.dim() != 3 || frames < 1 || x.size(1) % frames != 0) {
    Fail(kFn, "x has shape " + ShapeOf(x) + ", expected (B, T*S, C) with T=" +
                  std::to_string(frames));
  }
  const int64_t b = x.size(0), c = x.size(2), s = x.size(1) / frames;
  if (weight.dim() != 3 || weight.size(0) != c || weight.size(1) != 1 || weight.size(2) < 1) {
    Fail(kFn, "weight has shape " + ShapeOf(weight) + ", expected (C=" + std::to_string(c) +
                  ", 1, K)");
  }
  const int64_t kernel = weight.size(2);
  // (B, T, S, C) -> (B*S, C, T): one causal sequence per spatial position and channel.
  const at::Tensor seq = x.reshape({b, frames, s, c}).permute({0, 2, 3, 1}).reshape({b * s, c, frames});
  auto causal = [&](const at::Tensor& in) {
    return at::conv1d(in, weight, {}, /*stride=*/1, /*padding=*/kernel - 1, /*dilation=*/1,
                      /*groups=*/c)
        .narrow(-1, 0, frames);
  };
  const at::Tensor fwd = causal(seq);
  const at::Tensor bwd = causal(seq.flip({-1})).flip({-1});
  const at::Tensor center = seq.mul(weight.select(1, 0).select(1, kernel - 1).view({1, c, 1}));
  const at::Tensor y = fwd.add(bwd).sub(center);
  return y.reshape({b, s, c, frames}).permute({0, 3, 1, 2}).reshape({b, frames * s, c});
}

}  // namespace wmserve::worker::sana
