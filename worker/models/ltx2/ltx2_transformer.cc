// Ltx2Transformer: parameters, RoPE, timestep modulation, blocks and the output layer (see
// ltx2_transformer.h).
#include "worker/models/ltx2/ltx2_transformer.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/ops.h"

namespace wmserve::worker::ltx2 {

using sana::StoreParameter;
using sana::InvalidInputError;
using sana::SafetensorsError;

using sana::SeededGenerator;
using sana::ShapeOf;
using sana::TensorSeed;

namespace {

std::string ShapeOf(const std::vector<int64_t>& shape) { return sana::ShapeString(shape); }

[[noreturn]] void BadInput(const std::string& where, const std::string& message) {
  throw InvalidInputError(where + ": " + message);
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// --- RoPE helpers -----------------------------------------------------------------------------

// Rounds to float32: with the double intermediates below this reproduces float32 arithmetic
// exactly (double has more than 2 x 24 + 2 bits, so +, -, x, / rounded to double then to float
// equal the float32 operation).
inline double F32(double x) { return static_cast<double>(static_cast<float>(x)); }

constexpr double kPi = 3.141592653589793;  // Python's math.pi (torch.pi)

// torch.linspace(0, 1, steps, dtype=float64) as ATen computes it (the first half from the start,
// the second half from the end, so the grid is symmetric).
std::vector<double> Linspace01(int64_t steps) {
  std::vector<double> out(static_cast<size_t>(steps));
  if (steps == 1) {
    out[0] = 0.0;
    return out;
  }
  const double step = 1.0 / static_cast<double>(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i) {
    out[static_cast<size_t>(i)] =
        i < halfway ? step * static_cast<double>(i) : 1.0 - step * static_cast<double>(steps - i - 1);
  }
  return out;
}

// omega_k = float32((pi / 2) * theta^linspace(0, 1, K)) with the grid in float64
// (`rope_double_precision`; spec §2.4).
std::vector<double> RopeFrequencies(const TransformerConfig& config, bool round_to_float) {
  const int64_t k = config.rope_freqs_per_axis();
  const std::vector<double> grid = Linspace01(k);
  std::vector<double> freqs(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const double w = std::pow(config.rope_theta, grid[static_cast<size_t>(i)]) * kPi / 2.0;
    freqs[static_cast<size_t>(i)] = round_to_float ? F32(w) : w;
  }
  return freqs;
}

// Pixel-space [start, end) of latent index `i` on one axis: (i * s + offset - shift) clamped at
// 0, divided by `divisor` — the reference's `prepare_video_coords` in float32.
struct AxisBounds {
  double start = 0, end = 0;
};

AxisBounds TimeBounds(const TransformerConfig& c, int64_t frame, double fps32) {
  const int64_t s = c.vae_scale_factors[0];
  const double start = std::max<double>(0.0, static_cast<double>(frame * s + c.causal_offset - s));
  const double end =
      std::max<double>(0.0, static_cast<double>((frame + 1) * s + c.causal_offset - s));
  return {F32(start / fps32), F32(end / fps32)};
}

AxisBounds SpaceBounds(int64_t index, int64_t scale) {
  return {static_cast<double>(index * scale), static_cast<double>((index + 1) * scale)};
}

// The axis position u = 2 * (midpoint / max) - 1, float32 ops (kReference) or float64.
double AxisU(const AxisBounds& b, double max_pos, bool f32) {
  if (!f32) return 2.0 * ((b.start + b.end) / 2.0 / max_pos) - 1.0;
  const double mid = F32(F32(b.start + b.end) / 2.0);
  const double p = F32(mid / max_pos);
  return F32(F32(p * 2.0) - 1.0);
}

// cos / sin of the angles u_i * omega_k for every position i of one axis: (count, K) float32
// host tensors. The angle is a float32 product in kReference; cos / sin are then taken exactly
// (rounded from float64), within 1 ulp of the reference's float32 kernels.
void AxisTables(const std::vector<double>& u, const std::vector<double>& freqs, bool f32,
                at::Tensor* cos_out, at::Tensor* sin_out) {
  const int64_t n = static_cast<int64_t>(u.size()), k = static_cast<int64_t>(freqs.size());
  at::Tensor c = at::empty({n, k}, at::kFloat), s = at::empty({n, k}, at::kFloat);
  float* cp = c.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const double angle = f32 ? F32(u[static_cast<size_t>(i)] * freqs[static_cast<size_t>(j)])
                               : u[static_cast<size_t>(i)] * freqs[static_cast<size_t>(j)];
      cp[i * k + j] = static_cast<float>(std::cos(angle));
      sp[i * k + j] = static_cast<float>(std::sin(angle));
    }
  }
  *cos_out = c;
  *sin_out = s;
}

void CheckGrid(const char* where, const std::vector<int64_t>& frames, int64_t height,
               int64_t width, double fps) {
  if (frames.empty() || height < 1 || width < 1) {
    BadInput(where, "empty token grid (" + std::to_string(frames.size()) + " frames, " +
                        std::to_string(height) + " x " + std::to_string(width) + ")");
  }
  for (const int64_t f : frames) {
    if (f < 0) BadInput(where, "frame position " + std::to_string(f) + " is negative");
  }
  if (!(fps > 0) || !std::isfinite(fps)) {
    BadInput(where, "fps = " + std::to_string(fps) + " must be a positive number");
  }
}

// --- leaf ops ---------------------------------------------------------------------------------

// diffusers `RMSNorm` without weight (block norms): statistic in float32, result in x's dtype.
at::Tensor RmsNormNoWeight(const at::Tensor& x, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return xf.mul(at::rsqrt(xf.pow(2).mean({-1}, /*keepdim=*/true).add(eps))).to(x.scalar_type());
}

// x <- x * (1 + scale) + shift on a slice of a fresh tensor (in place; the reference's
// `norm * (1 + scale) + shift`).
void ModulateInPlace(at::Tensor x, const at::Tensor& shift, const at::Tensor& scale) {
  x.mul_(scale.add(1.0)).add_(shift);
}

// A bool keep-mask becomes an additive 0 / -inf mask (the LibTorch 1.x attention path adds it).
at::Tensor AdditiveMask(const at::Tensor& mask, c10::ScalarType dtype) {
  if (mask.scalar_type() != at::kBool) return mask.to(dtype);
  return at::zeros(mask.sizes(), mask.options().dtype(dtype))
      .masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
}

// --- dummy weights ----------------------------------------------------------------------------

at::Tensor DummyParameter(const std::string& name, const std::vector<int64_t>& shape,
                          uint64_t seed, c10::Device device) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(device));
  at::Generator gen = SeededGenerator(device, TensorSeed(seed, name));
  if (EndsWith(name, "scale_shift_table")) {
    return t.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(shape.back())), gen);
  }
  if (EndsWith(name, "norm_q.weight") || EndsWith(name, "norm_k.weight")) {
    return t.normal_(0.0, 0.1, gen).add_(1.0);
  }
  if (EndsWith(name, ".bias")) return t.normal_(0.0, 0.1, gen);
  const int64_t fan_in = shape.size() > 1 ? shape[1] : 1;
  return t.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)), gen);
}

}  // namespace

// --- RoPE -------------------------------------------------------------------------------------

at::Tensor Ltx2RopeTable::CosBhnr(int64_t batch) const {
  return cos.permute({1, 0, 2}).unsqueeze(0).expand({batch, -1, -1, -1});
}

at::Tensor Ltx2RopeTable::SinBhnr(int64_t batch) const {
  return sin.permute({1, 0, 2}).unsqueeze(0).expand({batch, -1, -1, -1});
}

std::vector<int64_t> FrameRange(int64_t first, int64_t count) {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int64_t i = 0; i < count; ++i) out.push_back(first + i);
  return out;
}

at::Tensor RopeCoordinates(const TransformerConfig& config,
                           const std::vector<int64_t>& frame_positions, int64_t height,
                           int64_t width, double fps) {
  CheckGrid("RopeCoordinates", frame_positions, height, width, fps);
  const int64_t frames = static_cast<int64_t>(frame_positions.size());
  const int64_t n = frames * height * width;
  const double fps32 = F32(fps);
  at::Tensor out = at::empty({3, n, 2}, at::kFloat);
  auto acc = out.accessor<float, 3>();
  int64_t token = 0;
  for (int64_t f = 0; f < frames; ++f) {
    const AxisBounds t = TimeBounds(config, frame_positions[static_cast<size_t>(f)], fps32);
    for (int64_t h = 0; h < height; ++h) {
      const AxisBounds y = SpaceBounds(h, config.vae_scale_factors[1]);
      for (int64_t w = 0; w < width; ++w, ++token) {
        const AxisBounds x = SpaceBounds(w, config.vae_scale_factors[2]);
        const AxisBounds axes[3] = {t, y, x};
        for (int a = 0; a < 3; ++a) {
          acc[a][token][0] = static_cast<float>(axes[a].start);
          acc[a][token][1] = static_cast<float>(axes[a].end);
        }
      }
    }
  }
  return out;
}

Ltx2RopeTable BuildRopeTable(const TransformerConfig& config,
                             const std::vector<int64_t>& frame_positions, int64_t height,
                             int64_t width, double fps, c10::Device device, RopeAngles angles) {
  CheckGrid("BuildRopeTable", frame_positions, height, width, fps);
  const bool f32 = angles == RopeAngles::kReference;
  const int64_t frames = static_cast<int64_t>(frame_positions.size());
  const int64_t k = config.rope_freqs_per_axis();
  const std::vector<double> freqs = RopeFrequencies(config, /*round_to_float=*/f32);

  // Each axis position enters the angles only through its own u, so cos / sin are taken per
  // (axis, position, frequency) — F*K + H*K + W*K values — and broadcast over the grid.
  const double fps32 = f32 ? F32(fps) : fps;
  std::vector<double> ut, uh, uw;
  for (const int64_t f : frame_positions) {
    ut.push_back(AxisU(TimeBounds(config, f, fps32), config.pos_embed_max_pos, f32));
  }
  for (int64_t h = 0; h < height; ++h) {
    uh.push_back(AxisU(SpaceBounds(h, config.vae_scale_factors[1]), config.base_height, f32));
  }
  for (int64_t w = 0; w < width; ++w) {
    uw.push_back(AxisU(SpaceBounds(w, config.vae_scale_factors[2]), config.base_width, f32));
  }
  at::Tensor ct, st, ch, sh, cw, sw;
  AxisTables(ut, freqs, f32, &ct, &st);
  AxisTables(uh, freqs, f32, &ch, &sh);
  AxisTables(uw, freqs, f32, &cw, &sw);

  const int64_t n = frames * height * width;
  const int64_t heads = config.num_attention_heads;
  auto assemble = [&](const at::Tensor& t, const at::Tensor& y, const at::Tensor& x,
                      double pad_value) {
    const std::vector<int64_t> grid = {frames, height, width, k, 1};
    // Slot 3k + axis: axis fastest (the reference's transpose(-1, -2).flatten).
    const at::Tensor per_axis = at::cat(
        {t.to(device).view({frames, 1, 1, k, 1}).expand(grid),
         y.to(device).view({1, height, 1, k, 1}).expand(grid),
         x.to(device).view({1, 1, width, k, 1}).expand(grid)},
        4);
    at::Tensor table = per_axis.reshape({n, 3 * k});
    if (config.rope_pad_slots() > 0) {
      // Identity slots (cos 1, sin 0) in front: head 0 carries them (spec §2.4).
      table = at::cat({at::full({n, config.rope_pad_slots()}, pad_value, table.options()), table},
                      1);
    }
    return table.view({n, heads, config.rope_slots_per_head()});
  };
  Ltx2RopeTable out;
  out.cos = assemble(ct, ch, cw, 1.0);
  out.sin = assemble(st, sh, sw, 0.0);
  return out;
}

at::Tensor ApplySplitRope(const at::Tensor& x, const Ltx2RopeTable& table) {
  const int64_t n = table.tokens();
  if (!x.defined() || x.dim() != 3 || x.size(1) != n || n == 0 ||
      x.size(2) != 2 * table.cos.size(1) * table.cos.size(2)) {
    BadInput("ApplySplitRope", "x has shape " + ShapeOf(x) + ", expected (B, N=" +
                                   std::to_string(n) + ", " +
                                   std::to_string(table.cos.defined()
                                                      ? 2 * table.cos.size(1) * table.cos.size(2)
                                                      : 0) +
                                   ")");
  }
  const int64_t b = x.size(0), heads = table.cos.size(1), r = table.cos.size(2);
  // (B, N, heads, 2, r): per head the first and second halves.
  const at::Tensor xf = x.to(at::kFloat).reshape({b, n, heads, 2, r});
  at::Tensor out = xf.mul(table.cos.unsqueeze(2));
  // out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin (the reference's two addcmul_).
  out.select(3, 0).addcmul_(xf.select(3, 1), table.sin, -1.0);
  out.select(3, 1).addcmul_(xf.select(3, 0), table.sin, 1.0);
  return out.view({b, n, heads * 2 * r}).to(x.scalar_type());
}

// --- packing ----------------------------------------------------------------------------------

at::Tensor PackLatentTokens(const at::Tensor& latents) {
  if (!latents.defined() || latents.dim() != 5) {
    BadInput("PackLatentTokens", "latents have shape " + ShapeOf(latents) +
                                     ", expected (B, C, T, H, W)");
  }
  const int64_t b = latents.size(0), c = latents.size(1);
  return latents.permute({0, 2, 3, 4, 1}).reshape({b, -1, c});
}

at::Tensor UnpackLatentTokens(const at::Tensor& tokens, int64_t frames, int64_t height,
                              int64_t width) {
  if (!tokens.defined() || tokens.dim() != 3 || tokens.size(1) != frames * height * width) {
    BadInput("UnpackLatentTokens", "tokens have shape " + ShapeOf(tokens) + ", expected (B, " +
                                       std::to_string(frames * height * width) + ", C)");
  }
  const int64_t b = tokens.size(0), c = tokens.size(2);
  return tokens.reshape({b, frames, height, width, c}).permute({0, 4, 1, 2, 3}).contiguous();
}

// --- timesteps --------------------------------------------------------------------------------

Ltx2Timesteps Ltx2Timesteps::PerToken(at::Tensor values) {
  Ltx2Timesteps t;
  t.values = std::move(values);
  return t;
}

Ltx2Timesteps Ltx2Timesteps::Grouped(at::Tensor values, std::vector<int64_t> lengths) {
  Ltx2Timesteps t;
  t.values = std::move(values);
  t.group_lengths = std::move(lengths);
  if (t.group_lengths.empty()) {
    BadInput("Ltx2Timesteps::Grouped", "no groups (use PerToken for per-token values)");
  }
  return t;
}

Ltx2Timesteps Ltx2Timesteps::Uniform(at::Tensor values, int64_t tokens) {
  if (!values.defined() || values.dim() != 1) {
    BadInput("Ltx2Timesteps::Uniform", "values have shape " + ShapeOf(values) + ", expected (B,)");
  }
  return Grouped(values.unsqueeze(1), {tokens});
}

int64_t Ltx2TextContext::bytes() const {
  int64_t total = 0;
  auto add = [&](const at::Tensor& t) {
    if (t.defined()) total += t.numel() * static_cast<int64_t>(t.element_size());
  };
  add(projected);
  add(bias);
  for (const at::Tensor& t : k) add(t);
  for (const at::Tensor& t : v) add(t);
  return total;
}

// --- parameters -------------------------------------------------------------------------------

Ltx2Transformer::Ltx2Transformer(TransformerConfig config) : config_(std::move(config)) {
  config_.Validate();
  weights_.blocks.resize(static_cast<size_t>(config_.num_layers));
}

void Ltx2Transformer::ForEachParameter(
    const TransformerConfig& cfg, Ltx2Weights* w,
    const std::function<void(const std::string&, std::vector<int64_t>, at::Tensor*)>& fn) {
  const int64_t d = cfg.inner_dim(), ff = cfg.ffn_dim();
  auto slot = [&](at::Tensor Ltx2Weights::*member) { return w ? &(w->*member) : nullptr; };
  using W = Ltx2Weights;
  fn("proj_in.weight", {d, cfg.in_channels}, slot(&W::proj_in_weight));
  fn("proj_in.bias", {d}, slot(&W::proj_in_bias));
  const std::string te = "time_embed.emb.timestep_embedder.";
  fn(te + "linear_1.weight", {d, cfg.timestep_embed_dim}, slot(&W::t_linear1_weight));
  fn(te + "linear_1.bias", {d}, slot(&W::t_linear1_bias));
  fn(te + "linear_2.weight", {d, d}, slot(&W::t_linear2_weight));
  fn(te + "linear_2.bias", {d}, slot(&W::t_linear2_bias));
  fn("time_embed.linear.weight", {6 * d, d}, slot(&W::t_mod_weight));
  fn("time_embed.linear.bias", {6 * d}, slot(&W::t_mod_bias));
  fn("caption_projection.linear_1.weight", {d, cfg.caption_channels}, slot(&W::caption1_weight));
  fn("caption_projection.linear_1.bias", {d}, slot(&W::caption1_bias));
  fn("caption_projection.linear_2.weight", {d, d}, slot(&W::caption2_weight));
  fn("caption_projection.linear_2.bias", {d}, slot(&W::caption2_bias));
  for (int i = 0; i < cfg.num_layers; ++i) {
    Ltx2BlockWeights* b = w ? &w->blocks.at(static_cast<size_t>(i)) : nullptr;
    const std::string p = "transformer_blocks." + std::to_string(i) + ".";
    auto bs = [&](at::Tensor Ltx2BlockWeights::*member) { return b ? &(b->*member) : nullptr; };
    using B = Ltx2BlockWeights;
    fn(p + "scale_shift_table", {6, d}, bs(&B::scale_shift_table));
    fn(p + "attn1.to_q.weight", {d, d}, bs(&B::q_weight));
    fn(p + "attn1.to_q.bias", {d}, bs(&B::q_bias));
    fn(p + "attn1.to_k.weight", {d, d}, bs(&B::k_weight));
    fn(p + "attn1.to_k.bias", {d}, bs(&B::k_bias));
    fn(p + "attn1.to_v.weight", {d, d}, bs(&B::v_weight));
    fn(p + "attn1.to_v.bias", {d}, bs(&B::v_bias));
    fn(p + "attn1.to_out.0.weight", {d, d}, bs(&B::out_weight));
    fn(p + "attn1.to_out.0.bias", {d}, bs(&B::out_bias));
    fn(p + "attn1.norm_q.weight", {d}, bs(&B::norm_q));
    fn(p + "attn1.norm_k.weight", {d}, bs(&B::norm_k));
    fn(p + "attn2.to_q.weight", {d, d}, bs(&B::cross_q_weight));
    fn(p + "attn2.to_q.bias", {d}, bs(&B::cross_q_bias));
    fn(p + "attn2.to_k.weight", {d, cfg.cross_attention_dim}, bs(&B::cross_k_weight));
    fn(p + "attn2.to_k.bias", {d}, bs(&B::cross_k_bias));
    fn(p + "attn2.to_v.weight", {d, cfg.cross_attention_dim}, bs(&B::cross_v_weight));
    fn(p + "attn2.to_v.bias", {d}, bs(&B::cross_v_bias));
    fn(p + "attn2.to_out.0.weight", {d, d}, bs(&B::cross_out_weight));
    fn(p + "attn2.to_out.0.bias", {d}, bs(&B::cross_out_bias));
    fn(p + "attn2.norm_q.weight", {d}, bs(&B::cross_norm_q));
    fn(p + "attn2.norm_k.weight", {d}, bs(&B::cross_norm_k));
    fn(p + "ff.net.0.proj.weight", {ff, d}, bs(&B::ff_in_weight));
    fn(p + "ff.net.0.proj.bias", {ff}, bs(&B::ff_in_bias));
    fn(p + "ff.net.2.weight", {d, ff}, bs(&B::ff_out_weight));
    fn(p + "ff.net.2.bias", {d}, bs(&B::ff_out_bias));
  }
  fn("scale_shift_table", {2, d}, slot(&W::scale_shift_table));
  fn("proj_out.weight", {cfg.out_channels, d}, slot(&W::proj_out_weight));
  fn("proj_out.bias", {cfg.out_channels}, slot(&W::proj_out_bias));
}

std::map<std::string, std::vector<int64_t>> Ltx2Transformer::ExpectedParameters(
    const TransformerConfig& config) {
  std::map<std::string, std::vector<int64_t>> out;
  ForEachParameter(config, nullptr,
                   [&](const std::string& name, std::vector<int64_t> shape, at::Tensor*) {
                     out.emplace(name, std::move(shape));
                   });
  return out;
}

int64_t Ltx2Transformer::ParameterCount(const TransformerConfig& config) {
  int64_t total = 0;
  ForEachParameter(config, nullptr,
                   [&](const std::string&, std::vector<int64_t> shape, at::Tensor*) {
                     int64_t n = 1;
                     for (const int64_t d : shape) n *= d;
                     total += n;
                   });
  return total;
}

std::set<std::string> Ltx2Transformer::IgnoredTensorPatterns(const TransformerConfig& config) {
  // Spec §2.8 "Keys to ignore": the audio stream (audio_proj_in, audio_time_embed,
  // audio_caption_projection, audio_scale_shift_table, audio_proj_out, ...), the audio<->video
  // cross-attention modulation (av_cross_attn_*), and per block the audio self/cross-attention,
  // FFN and tables (audio_*, incl. audio_to_video_attn and audio_a2v_cross_attn_scale_shift_table),
  // video_to_audio_attn and video_a2v_cross_attn_scale_shift_table.
  std::set<std::string> patterns = {"audio_*", "av_cross_attn_*"};
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = "transformer_blocks." + std::to_string(i) + ".";
    patterns.insert(p + "audio_*");
    patterns.insert(p + "video_to_audio_*");
    patterns.insert(p + "video_a2v_cross_attn_scale_shift_table");
  }
  return patterns;
}

void Ltx2Transformer::LoadWeights(const sana::SafetensorsFile& file, c10::ScalarType dtype,
                                  c10::Device device) {
  file.CheckTensors(ExpectedParameters(), IgnoredTensorPatterns(config_));
  LoadFrom([&](const std::string& name, const std::vector<int64_t>&) {
    return file.Load(name, dtype, device);
  }, dtype, device);
}

void Ltx2Transformer::LoadWeights(const Ltx2TensorSource& source, c10::ScalarType dtype,
                                  c10::Device device) {
  LoadFrom([&](const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor value = source(name, shape);
    if (!value.defined() || value.sizes() != c10::IntArrayRef(shape)) {
      throw SafetensorsError("Ltx2Transformer::LoadWeights: tensor '" + name + "' has shape " +
                             ShapeOf(value) + ", expected " + ShapeOf(shape));
    }
    return value.to(device, dtype);
  }, dtype, device);
}

void Ltx2Transformer::InitDummyWeights(uint64_t seed, c10::ScalarType dtype, c10::Device device) {
  LoadWeights([&](const std::string& name, const std::vector<int64_t>& shape) {
    return DummyParameter(name, shape, seed, device);
  }, dtype, device);
}

void Ltx2Transformer::LoadFrom(const Ltx2TensorSource& source, c10::ScalarType dtype,
                               c10::Device device) {
  at::NoGradGuard no_grad;
  Ltx2Weights fresh;
  fresh.blocks.resize(static_cast<size_t>(config_.num_layers));
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  const int64_t d = config_.inner_dim();
  for (Ltx2BlockWeights& b : fresh.blocks) {
    b.qkv_weight = at::empty({3 * d, d}, options);
    b.qkv_bias = at::empty({3 * d}, options);
    b.q_weight = b.qkv_weight.narrow(0, 0, d);
    b.k_weight = b.qkv_weight.narrow(0, d, d);
    b.v_weight = b.qkv_weight.narrow(0, 2 * d, d);
    b.q_bias = b.qkv_bias.narrow(0, 0, d);
    b.k_bias = b.qkv_bias.narrow(0, d, d);
    b.v_bias = b.qkv_bias.narrow(0, 2 * d, d);
  }
  ForEachParameter(config_, &fresh,
                   [&](const std::string& name, std::vector<int64_t> shape, at::Tensor* slot) {
                     StoreParameter(slot, source(name, shape));
                   });
  weights_ = std::move(fresh);
  dtype_ = dtype;
  device_ = device;
  loaded_ = true;
}

int64_t Ltx2Transformer::WeightBytes() const {
  return ParameterCount() * static_cast<int64_t>(c10::elementSize(dtype_));
}

const at::Tensor& Ltx2Transformer::Parameter(const std::string& name) const {
  const at::Tensor* found = nullptr;
  // ForEachParameter wants a mutable Ltx2Weights; it only takes member addresses.
  ForEachParameter(config_, const_cast<Ltx2Weights*>(&weights_),
                   [&](const std::string& n, std::vector<int64_t>, at::Tensor* slot) {
                     if (n == name) found = slot;
                   });
  if (!found) throw std::out_of_range("Ltx2Transformer: no parameter named '" + name + "'");
  return *found;
}

void Ltx2Transformer::RequireLoaded(const char* what) const {
  if (!loaded_) {
    throw std::runtime_error(std::string("Ltx2Transformer::") + what +
                             ": no weights loaded (LoadWeights or InitDummyWeights)");
  }
}

Ltx2RopeTable Ltx2Transformer::Rope(const std::vector<int64_t>& frame_positions, int64_t height,
                                    int64_t width, double fps, RopeAngles angles) const {
  return BuildRopeTable(config_, frame_positions, height, width, fps, device_, angles);
}

// --- text -------------------------------------------------------------------------------------

void Ltx2Transformer::CrossKv(int layer, const at::Tensor& projected, at::Tensor* k,
                              at::Tensor* v) const {
  const Ltx2BlockWeights& w = weights_.blocks[static_cast<size_t>(layer)];
  const int64_t b = projected.size(0), l = projected.size(1);
  const int64_t heads = config_.num_attention_heads, hd = config_.attention_head_dim;
  const at::Tensor key = sana::RmsNorm(at::linear(projected, w.cross_k_weight, w.cross_k_bias),
                                       w.cross_norm_k, config_.norm_eps);
  *k = key.view({b, l, heads, hd}).transpose(1, 2);
  *v = at::linear(projected, w.cross_v_weight, w.cross_v_bias).view({b, l, heads, hd}).transpose(1, 2);
}

Ltx2TextContext Ltx2Transformer::PrepareText(const at::Tensor& text, const at::Tensor& mask,
                                             bool cache_kv) const {
  RequireLoaded("PrepareText");
  constexpr const char* kWhere = "Ltx2Transformer::PrepareText";
  if (!text.defined() || text.dim() != 3 || text.size(0) < 1 || text.size(1) < 1 ||
      text.size(2) != config_.caption_channels) {
    BadInput(kWhere, "text has shape " + ShapeOf(text) + ", expected (B, L, " +
                         std::to_string(config_.caption_channels) + ")");
  }
  if (!at::isfinite(text).all().item<bool>()) BadInput(kWhere, "text has non-finite values");
  const int64_t b = text.size(0), l = text.size(1);
  if (mask.defined() && mask.sizes() != c10::IntArrayRef({b, l})) {
    BadInput(kWhere, "mask has shape " + ShapeOf(mask) + ", expected (B, L) = [" +
                         std::to_string(b) + ", " + std::to_string(l) + "]");
  }
  at::NoGradGuard no_grad;
  const Ltx2Weights& w = weights_;
  Ltx2TextContext ctx;
  // caption_projection (PixArtAlphaTextProjection): linear_1 -> GELU(tanh) -> linear_2.
  const at::Tensor x = text.to(device_, dtype_);
  ctx.projected = at::linear(at::gelu(at::linear(x, w.caption1_weight, w.caption1_bias), "tanh"),
                             w.caption2_weight, w.caption2_bias);
  // `_prepare_encoder_attention_mask`: dropped when every entry is nonzero, else (1 - m)*-10000
  // added to every head's and query's logits.
  if (mask.defined()) {
    const at::Tensor keep = mask.to(device_).ne(0);
    if (!keep.all().item<bool>()) {
      ctx.bias = keep.to(dtype_).neg().add(1.0).mul(config_.text_mask_bias).view({b, 1, 1, l});
    }
  }
  if (cache_kv) {
    ctx.k.resize(static_cast<size_t>(config_.num_layers));
    ctx.v.resize(static_cast<size_t>(config_.num_layers));
    for (int i = 0; i < config_.num_layers; ++i) {
      CrossKv(i, ctx.projected, &ctx.k[static_cast<size_t>(i)], &ctx.v[static_cast<size_t>(i)]);
    }
  }
  return ctx;
}

// --- forward ----------------------------------------------------------------------------------

// The timestep conditioning of one forward, per token group (spec §2.3, §2.10 memory note): a
// group of `length` tokens starting at `start` shares `temb` (B, 1, 6, D) and `embedded`
// (B, 1, D); the per-token layout is one group whose tensors have N rows instead of 1.
struct Ltx2Transformer::Modulation {
  struct Group {
    int64_t start = 0, length = 0;
    at::Tensor temb;      // (B, 1 or length, 6, D)
    at::Tensor embedded;  // (B, 1 or length, D)
  };
  std::vector<Group> groups;
};

Ltx2ForwardResult Ltx2Transformer::Forward(const at::Tensor& tokens,
                                           const Ltx2Timesteps& timesteps,
                                           const Ltx2RopeTable& rope, const Ltx2TextContext& text,
                                           const Ltx2ForwardOptions& options) const {
  RequireLoaded("Forward");
  constexpr const char* kWhere = "Ltx2Transformer::Forward";
  const TransformerConfig& cfg = config_;
  const int64_t d = cfg.inner_dim(), heads = cfg.num_attention_heads, hd = cfg.attention_head_dim;
  const int layers = cfg.num_layers;

  // --- input checks ------------------------------------------------------------------------
  if (!tokens.defined() || tokens.dim() != 3 || tokens.size(0) < 1 || tokens.size(1) < 1 ||
      tokens.size(2) != cfg.in_channels) {
    BadInput(kWhere, "tokens have shape " + ShapeOf(tokens) + ", expected (B, N, " +
                         std::to_string(cfg.in_channels) + ")");
  }
  const int64_t b = tokens.size(0), n = tokens.size(1);
  if (rope.tokens() != n || rope.cos.size(1) != heads ||
      rope.cos.size(2) != cfg.rope_slots_per_head()) {
    BadInput(kWhere, "RoPE table has shape " + ShapeOf(rope.cos) + ", expected (N=" +
                         std::to_string(n) + ", " + std::to_string(heads) + ", " +
                         std::to_string(cfg.rope_slots_per_head()) + ")");
  }
  if (!timesteps.values.defined()) BadInput(kWhere, "timesteps are undefined");
  if (timesteps.per_token()) {
    if (timesteps.values.sizes() != c10::IntArrayRef({b, n})) {
      BadInput(kWhere, "per-token timesteps have shape " + ShapeOf(timesteps.values) +
                           ", expected (B, N) = [" + std::to_string(b) + ", " +
                           std::to_string(n) + "]");
    }
  } else {
    const int64_t g = static_cast<int64_t>(timesteps.group_lengths.size());
    int64_t sum = 0;
    bool positive = true;
    for (const int64_t len : timesteps.group_lengths) {
      sum += len;
      positive = positive && len >= 1;
    }
    if (timesteps.values.sizes() != c10::IntArrayRef({b, g}) || sum != n || !positive) {
      BadInput(kWhere, "grouped timesteps have values " + ShapeOf(timesteps.values) + " and " +
                           std::to_string(g) + " groups of " + std::to_string(sum) +
                           " tokens, expected (B=" + std::to_string(b) +
                           ", G) and positive group lengths summing to N=" + std::to_string(n));
    }
  }
  if (text.batch() != b || text.projected.size(2) != d) {
    BadInput(kWhere, "text context has projected text " + ShapeOf(text.projected) +
                         ", expected (B=" + std::to_string(b) + ", L, " + std::to_string(d) + ")");
  }
  if (text.cached() && (static_cast<int>(text.k.size()) != layers ||
                        static_cast<int>(text.v.size()) != layers)) {
    BadInput(kWhere, "text context caches " + std::to_string(text.k.size()) +
                         " layers, the model has " + std::to_string(layers));
  }
  const AttentionPattern pattern = options.pattern;
  at::Tensor full_mask;
  if (pattern == AttentionPattern::kFull && options.self_attention_mask.defined()) {
    const at::Tensor& m = options.self_attention_mask;
    const bool square = m.dim() == 2 && m.size(0) == n && m.size(1) == n;
    const bool batched = m.dim() == 4 && m.size(0) == b && m.size(1) == 1 && m.size(2) == n &&
                         m.size(3) == n;
    if (!square && !batched) {
      BadInput(kWhere, "self_attention_mask has shape " + ShapeOf(m) + ", expected (N, N) or " +
                           "(B, 1, N, N) with N=" + std::to_string(n));
    }
    if (m.scalar_type() == at::kBool && !m.any(-1).all().item<bool>()) {
      BadInput(kWhere, "self_attention_mask has a query that attends to no key");
    }
    full_mask = AdditiveMask(m.to(device_), dtype_);
  }
  if (pattern == AttentionPattern::kSinkCurrent &&
      (options.n_context_tokens < 0 || options.n_context_tokens > n)) {
    BadInput(kWhere, "n_context_tokens = " + std::to_string(options.n_context_tokens) +
                         " outside [0, N=" + std::to_string(n) + "]");
  }
  const int64_t prefix = options.prefix_tokens;
  if (pattern == AttentionPattern::kPrefix) {
    const auto* ws = options.kv_workspace;
    if (!ws || static_cast<int>(ws->size()) != layers || prefix < 0) {
      BadInput(kWhere, "kPrefix needs one K/V workspace per layer (" + std::to_string(layers) +
                           ") and prefix_tokens >= 0");
    }
    for (const Ltx2LayerKv& kv : *ws) {
      if (!kv.k.defined() || !kv.v.defined() || kv.k.dim() != 3 || kv.k.sizes() != kv.v.sizes() ||
          kv.k.size(0) != b || kv.k.size(2) != d || kv.k.size(1) < prefix + n ||
          kv.k.scalar_type() != dtype_ || kv.v.scalar_type() != dtype_ ||
          kv.k.device() != device_ || kv.v.device() != device_) {
        BadInput(kWhere, "K/V workspace " + ShapeOf(kv.k) + " / " + ShapeOf(kv.v) +
                             " is not (B=" + std::to_string(b) + ", >= prefix + N = " +
                             std::to_string(prefix + n) + ", D=" + std::to_string(d) +
                             ") in the model's dtype on its device");
      }
    }
  } else if (options.kv_workspace) {
    BadInput(kWhere, "a K/V workspace is only used with AttentionPattern::kPrefix");
  }

  at::NoGradGuard no_grad;
  const Ltx2Weights& w = weights_;
  const Ltx2TensorTap& tap = options.tap;
  // Tables built elsewhere (tests, BuildRopeTable on the CPU) follow the model (no-op if there).
  const Ltx2RopeTable rope_here = {rope.cos.to(device_), rope.sin.to(device_)};
  auto emit = [&](const char* name, const at::Tensor& t) {
    if (tap) tap(name, t);
  };
  auto emit_block = [&](int i, const char* name, const at::Tensor& t) {
    if (tap) tap("block." + std::to_string(i) + "." + name, t);
  };

  // --- embeddings ----------------------------------------------------------------------------
  at::Tensor x = at::linear(tokens.to(device_, dtype_), w.proj_in_weight, w.proj_in_bias);
  emit("inter.proj_in", x);

  // adaLN-single (spec §2.3): sinusoid(t) -> linear_1 -> SiLU -> linear_2 = e (embedded
  // timestep) -> SiLU -> linear = temb (6 D), for B*N (per token) or B*G (grouped) values only.
  Modulation mod;
  {
    const at::Tensor t = timesteps.values.to(device_, at::kFloat);
    const at::Tensor sinus =
        sana::TimestepSinusoid(t.reshape({-1}), cfg.timestep_embed_dim, cfg.timestep_max_period);
    emit("inter.timestep_sinusoid", sinus);
    const at::Tensor e = at::linear(
        at::silu(at::linear(sinus.to(dtype_), w.t_linear1_weight, w.t_linear1_bias)),
        w.t_linear2_weight, w.t_linear2_bias);
    const at::Tensor temb = at::linear(at::silu(e), w.t_mod_weight, w.t_mod_bias);
    emit("inter.temb", temb);
    emit("inter.embedded_timestep", e);
    const int64_t rows = t.size(1);  // N per token, G grouped
    const at::Tensor temb4 = temb.view({b, rows, 6, d});
    const at::Tensor e3 = e.view({b, rows, d});
    if (timesteps.per_token()) {
      mod.groups.push_back({0, n, temb4, e3});
    } else {
      int64_t start = 0;
      for (int64_t g = 0; g < rows; ++g) {
        const int64_t len = timesteps.group_lengths[static_cast<size_t>(g)];
        mod.groups.push_back({start, len, temb4.narrow(1, g, 1), e3.narrow(1, g, 1)});
        start += len;
      }
    }
  }

  Ltx2ForwardResult result;
  if (options.capture != KvCapture::kNone) result.captured.resize(static_cast<size_t>(layers));

  // --- blocks (spec §2.5; S-REF `_forward_video_block`) --------------------------------------
  std::vector<at::Tensor> ada(mod.groups.size());  // per group (B, rows, 6, D)
  auto ada_row = [&](size_t g, int64_t row) { return ada[g].select(2, row); };
  auto for_groups = [&](const std::function<void(size_t, int64_t, int64_t)>& fn) {
    for (size_t g = 0; g < mod.groups.size(); ++g) fn(g, mod.groups[g].start, mod.groups[g].length);
  };
  auto heads_view = [&](const at::Tensor& t) {  // (B, T, D) -> (B, heads, T, hd), a view
    return t.view({t.size(0), t.size(1), heads, hd}).transpose(1, 2);
  };

  for (int i = 0; i < layers; ++i) {
    const Ltx2BlockWeights& bw = w.blocks[static_cast<size_t>(i)];
    const bool last = i + 1 == layers;
    const bool kv_only = last && options.skip_output && options.capture != KvCapture::kNone;
    for (size_t g = 0; g < mod.groups.size(); ++g) {
      ada[g] = bw.scale_shift_table.add(mod.groups[g].temb);
    }

    // 1. Self-attention input: RMSNorm(x) * (1 + scale_msa) + shift_msa.
    at::Tensor h = RmsNormNoWeight(x, cfg.norm_eps);
    for_groups([&](size_t g, int64_t start, int64_t len) {
      ModulateInPlace(h.narrow(1, start, len), ada_row(g, 0), ada_row(g, 1));
    });
    emit_block(i, "attn1_in", h);

    // q, k, v in one GEMM (an exact rewrite of to_q / to_k / to_v); the capture-only last layer
    // needs k and v alone.
    at::Tensor q, k, v;
    if (kv_only) {
      const at::Tensor kv = at::linear(h, bw.qkv_weight.narrow(0, d, 2 * d),
                                       bw.qkv_bias.narrow(0, d, 2 * d));
      k = kv.narrow(2, 0, d);
      v = kv.narrow(2, d, d);
    } else {
      const at::Tensor qkv = at::linear(h, bw.qkv_weight, bw.qkv_bias);
      q = qkv.narrow(2, 0, d);
      k = qkv.narrow(2, d, d);
      v = qkv.narrow(2, 2 * d, d);
    }
    k = sana::RmsNorm(k, bw.norm_k, cfg.norm_eps);
    emit_block(i, "attn1_k_pre_rope", k);
    emit_block(i, "attn1_v", v);
    if (options.capture == KvCapture::kPreRope) {
      result.captured[static_cast<size_t>(i)] = {k, v.contiguous()};
    }
    const at::Tensor k_rot = ApplySplitRope(k, rope_here);
    emit_block(i, "attn1_k_post_rope", k_rot);

    // Keys / values the block's queries attend to.
    at::Tensor keys, values;
    if (pattern == AttentionPattern::kPrefix) {
      const Ltx2LayerKv& ws = (*options.kv_workspace)[static_cast<size_t>(i)];
      at::Tensor k_slot = ws.k.narrow(1, prefix, n), v_slot = ws.v.narrow(1, prefix, n);
      k_slot.copy_(k_rot);
      v_slot.copy_(v);
      if (options.capture == KvCapture::kPostRope) {
        result.captured[static_cast<size_t>(i)] = {k_slot, v_slot};
      }
      keys = ws.k.narrow(1, 0, prefix + n);
      values = ws.v.narrow(1, 0, prefix + n);
    } else {
      if (options.capture == KvCapture::kPostRope) {
        result.captured[static_cast<size_t>(i)] = {k_rot, v.contiguous()};
      }
      keys = k_rot;
      values = v;
    }
    if (kv_only) break;  // the capture needs nothing after the last layer's K/V

    q = ApplySplitRope(sana::RmsNorm(q, bw.norm_q, cfg.norm_eps), rope_here);
    const at::Tensor qh = heads_view(q), kh = heads_view(keys), vh = heads_view(values);
    at::Tensor attn;  // (B, N, D)
    const int64_t sink = options.n_context_tokens;
    if (pattern == AttentionPattern::kSinkCurrent && sink > 0 && sink < n) {
      // The reference's two SDPA calls (S-REF `_streaming_self_attention`): sink queries see the
      // sink keys only, current queries see every key. Both land in one (B, N, heads, hd) buffer
      // (the head merge needs a copy anyway).
      at::Tensor merged = at::empty({b, n, heads, hd}, q.options());
      merged.narrow(1, 0, sink).copy_(
          sana::ScaledDotProductAttention(qh.narrow(2, 0, sink), kh.narrow(2, 0, sink),
                                          vh.narrow(2, 0, sink))
              .transpose(1, 2));
      merged.narrow(1, sink, n - sink).copy_(
          sana::ScaledDotProductAttention(qh.narrow(2, sink, n - sink), kh, vh).transpose(1, 2));
      attn = merged.view({b, n, d});
    } else {
      attn = sana::ScaledDotProductAttention(qh, kh, vh, full_mask).transpose(1, 2).reshape({b, n, d});
    }
    const at::Tensor attn_out = at::linear(attn, bw.out_weight, bw.out_bias);
    emit_block(i, "attn1_out", attn_out);
    for_groups([&](size_t g, int64_t start, int64_t len) {
      x.narrow(1, start, len).addcmul_(attn_out.narrow(1, start, len), ada_row(g, 2));
    });

    // 2. Cross-attention to the text: RMSNorm(x), no modulation, no gate.
    h = RmsNormNoWeight(x, cfg.norm_eps);
    emit_block(i, "attn2_in", h);
    {
      const at::Tensor cq = heads_view(sana::RmsNorm(
          at::linear(h, bw.cross_q_weight, bw.cross_q_bias), bw.cross_norm_q, cfg.norm_eps));
      at::Tensor ck, cv;
      if (text.cached()) {
        ck = text.k[static_cast<size_t>(i)];
        cv = text.v[static_cast<size_t>(i)];
      } else {
        CrossKv(i, text.projected, &ck, &cv);
      }
      const at::Tensor cross = sana::ScaledDotProductAttention(cq, ck, cv, text.bias);
      const at::Tensor cross_out = at::linear(cross.transpose(1, 2).reshape({b, n, d}),
                                              bw.cross_out_weight, bw.cross_out_bias);
      emit_block(i, "attn2_out", cross_out);
      x.add_(cross_out);
    }

    // 3. FFN: RMSNorm(x) * (1 + scale_mlp) + shift_mlp -> GELU-tanh MLP, gated.
    h = RmsNormNoWeight(x, cfg.norm_eps);
    for_groups([&](size_t g, int64_t start, int64_t len) {
      ModulateInPlace(h.narrow(1, start, len), ada_row(g, 3), ada_row(g, 4));
    });
    emit_block(i, "ff_in", h);
    const at::Tensor ff = at::linear(
        at::gelu(at::linear(h, bw.ff_in_weight, bw.ff_in_bias), "tanh"), bw.ff_out_weight,
        bw.ff_out_bias);
    emit_block(i, "ff_out", ff);
    for_groups([&](size_t g, int64_t start, int64_t len) {
      x.narrow(1, start, len).addcmul_(ff.narrow(1, start, len), ada_row(g, 5));
    });
    emit_block(i, "out", x);
  }
  if (options.skip_output) return result;

  // --- output layer (spec §2.6): LayerNorm * (1 + scale) + shift from the embedded timestep ---
  at::Tensor h = at::layer_norm(x, {d}, {}, {}, cfg.layer_norm_eps);
  emit("inter.norm_out", h);
  for (const Modulation::Group& g : mod.groups) {
    const at::Tensor ss = w.scale_shift_table.add(g.embedded.unsqueeze(2));  // (B, rows, 2, D)
    ModulateInPlace(h.narrow(1, g.start, g.length), ss.select(2, 0), ss.select(2, 1));
  }
  result.velocity = at::linear(h, w.proj_out_weight, w.proj_out_bias);
  return result;
}

}  // namespace wmserve::worker::ltx2
