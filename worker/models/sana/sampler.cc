#include "worker/models/sana/sampler.h"

#include <ATen/ops/add.h>
#include <ATen/ops/div.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "worker/models/sana/errors.h"

namespace wmserve::worker::sana {
namespace {

// Rounds through memory: the compiler may not contract a product that went through a volatile
// into a following sum (an FMA would skip the product's rounding that numpy/torch perform, as
// each of their ops is a separate kernel).
float Rounded(float x) {
  volatile float r = x;
  return r;
}
double Rounded(double x) {
  volatile double r = x;
  return r;
}

std::string ShapeString(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

at::Tensor FloatVectorTensor(const std::vector<float>& values, c10::Device device) {
  // at::tensor copies the data into a fresh CPU tensor.
  at::Tensor t = at::tensor(at::ArrayRef<float>(values), at::TensorOptions().dtype(at::kFloat));
  return device.is_cpu() ? t : t.to(device);
}

std::string FirstMultiples(int64_t m, int count) {
  std::string out;
  for (int k = 1; k <= count; ++k) out += std::to_string(m * k + 1) + ", ";
  return out + "...";
}

}  // namespace

// --- schedules -----------------------------------------------------------------------------

at::Tensor SigmaSchedule::SigmasTensor(c10::Device device) const {
  return FloatVectorTensor(sigmas, device);
}

at::Tensor SigmaSchedule::TimestepsTensor(c10::Device device) const {
  return FloatVectorTensor(timesteps, device);
}

double ShiftSigma(double sigma, double shift) {
  return shift * sigma / (1.0 + Rounded((shift - 1.0) * sigma));
}

std::vector<float> FlowMatchTrainSigmas(double shift, int num_train_timesteps) {
  if (!(shift > 0.0) || !std::isfinite(shift)) {
    throw InvalidInputError("FlowMatchTrainSigmas: shift must be positive and finite, got " +
                            std::to_string(shift));
  }
  if (num_train_timesteps < 1) {
    throw InvalidInputError("FlowMatchTrainSigmas: num_train_timesteps must be >= 1, got " +
                            std::to_string(num_train_timesteps));
  }
  // diffusers __init__: timesteps = np.linspace(1, N, N, dtype=float32)[::-1] (exact integers),
  // sigmas = timesteps / N, sigmas = shift * sigmas / (1 + (shift - 1) * sigmas), all torch
  // float32 ops on CPU (Python scalars enter the kernels as float: 9.8f, 8.8f).
  const float n = static_cast<float>(num_train_timesteps);
  const float shift_f = static_cast<float>(shift);
  const float shift_m1_f = static_cast<float>(shift - 1.0);
  std::vector<float> sigmas;
  sigmas.reserve(static_cast<size_t>(num_train_timesteps));
  for (int i = num_train_timesteps; i >= 1; --i) {
    const float s = static_cast<float>(i) / n;
    const float num = shift_f * s;
    const float den = 1.0f + Rounded(shift_m1_f * s);
    sigmas.push_back(num / den);
  }
  return sigmas;
}

SigmaSchedule FlowMatchSchedule(int steps, double shift, int num_train_timesteps) {
  if (steps < 1) {
    throw InvalidInputError("FlowMatchSchedule: steps must be >= 1, got " + std::to_string(steps));
  }
  const std::vector<float> train = FlowMatchTrainSigmas(shift, num_train_timesteps);
  // sigma_max / sigma_min are `.item()`s of the float32 table: exact in double.
  const double n = static_cast<double>(num_train_timesteps);
  const double start = static_cast<double>(train.front()) * n;
  const double stop = static_cast<double>(train.back()) * n;
  // np.linspace(start, stop, steps) in float64: y_i = i * step + start, the last one = stop.
  std::vector<double> t(static_cast<size_t>(steps));
  if (steps == 1) {
    t[0] = start;
  } else {
    const double step = (stop - start) / static_cast<double>(steps - 1);
    for (int i = 0; i < steps; ++i) t[static_cast<size_t>(i)] = Rounded(i * step) + start;
    t.back() = stop;
  }
  SigmaSchedule out;
  out.sigmas.reserve(static_cast<size_t>(steps) + 1);
  out.timesteps.reserve(static_cast<size_t>(steps));
  for (double ti : t) {
    const double s = ti / n;  // float64
    // set_timesteps applies the shift again, in float64 (numpy), then casts to float32.
    const float sigma = static_cast<float>(ShiftSigma(s, shift));
    out.sigmas.push_back(sigma);
    out.timesteps.push_back(sigma * static_cast<float>(num_train_timesteps));  // float32 op
  }
  out.sigmas.push_back(0.0f);
  return out;
}

SigmaSchedule BidirectionalSchedule(int steps, double shift) {
  return FlowMatchSchedule(steps, shift);
}

SigmaSchedule ScheduleFromStepList(const std::vector<int>& list) {
  auto fail = [&](const std::string& why) {
    std::string values;
    for (size_t i = 0; i < list.size(); ++i) values += (i ? ", " : "") + std::to_string(list[i]);
    throw InvalidInputError("ScheduleFromStepList: denoising_step_list [" + values + "] " + why);
  };
  if (list.size() < 2) fail("must have at least 2 entries");
  if (list.back() != 0) fail("must end with 0");
  for (size_t i = 0; i + 1 < list.size(); ++i) {
    if (list[i] <= 0 || list[i] > kNumTrainTimesteps) {
      fail("must hold timesteps in (0, " + std::to_string(kNumTrainTimesteps) +
           "] before the final 0");
    }
    if (i > 0 && list[i] >= list[i - 1]) fail("must be strictly decreasing");
  }
  SigmaSchedule out;
  for (size_t i = 0; i + 1 < list.size(); ++i) {
    // float(t) / 1000.0 in Python (float64), np.array(...).astype(float32); shift 1.0 leaves
    // the float32 values unchanged (1 * s / (1 + 0 * s)).
    const float sigma =
        static_cast<float>(static_cast<double>(list[i]) / static_cast<double>(kNumTrainTimesteps));
    out.sigmas.push_back(sigma);
    out.timesteps.push_back(sigma * static_cast<float>(kNumTrainTimesteps));
  }
  out.sigmas.push_back(0.0f);
  return out;
}

SigmaSchedule StreamingSchedule() {
  return ScheduleFromStepList(
      std::vector<int>(kStreamingDenoisingStepList.begin(), kStreamingDenoisingStepList.end()));
}

// --- step helpers --------------------------------------------------------------------------

at::Tensor EulerStep(const at::Tensor& x, const at::Tensor& v, double sigma, double sigma_next) {
  if (!x.defined() || !v.defined()) throw InvalidInputError("EulerStep: undefined tensor");
  const float dt = static_cast<float>(sigma_next) - static_cast<float>(sigma);
  at::Tensor out = at::add(x.to(at::kFloat), at::mul(v.to(at::kFloat), static_cast<double>(dt)));
  return out.to(x.scalar_type());
}

at::Tensor CfgCombine(const at::Tensor& v_uncond, const at::Tensor& v_cond, double scale) {
  if (!v_uncond.defined() || !v_cond.defined()) {
    throw InvalidInputError("CfgCombine: undefined tensor");
  }
  if (v_uncond.sizes() != v_cond.sizes()) {
    throw InvalidInputError("CfgCombine: v_uncond " + ShapeString(v_uncond) + " and v_cond " +
                            ShapeString(v_cond) + " differ in shape");
  }
  return at::add(v_uncond, at::mul(at::sub(v_cond, v_uncond), scale));
}

at::Tensor CfgCombineBatched(const at::Tensor& v_batched, double scale) {
  if (!v_batched.defined() || v_batched.dim() < 1 || v_batched.size(0) % 2 != 0 ||
      v_batched.size(0) == 0) {
    throw InvalidInputError(
        "CfgCombineBatched: expected a [uncond; cond] batch of even size, got " +
        (v_batched.defined() ? ShapeString(v_batched) : "undefined"));
  }
  const int64_t b = v_batched.size(0) / 2;
  return CfgCombine(v_batched.narrow(0, 0, b), v_batched.narrow(0, b, b), scale);
}

at::Tensor PerFrameEulerStep(const at::Tensor& x, const at::Tensor& v,
                             const at::Tensor& frame_timesteps, const SigmaSchedule& schedule) {
  if (!x.defined() || !v.defined() || !frame_timesteps.defined()) {
    throw InvalidInputError("PerFrameEulerStep: undefined tensor");
  }
  if (x.dim() != 5 || v.sizes() != x.sizes()) {
    throw InvalidInputError(
        "PerFrameEulerStep: x must be (B, C, T, H, W) and v the same shape; x " + ShapeString(x) +
        ", v " + ShapeString(v));
  }
  if (schedule.sigmas.empty()) throw InvalidInputError("PerFrameEulerStep: empty schedule");
  const int64_t batch = x.size(0);
  const int64_t frames = x.size(2);
  at::Tensor t = frame_timesteps.to(x.device(), at::kFloat);
  if (t.dim() == 3 && t.size(1) == 1) t = t.squeeze(1);
  if (t.dim() == 1) t = t.unsqueeze(0);
  if (t.dim() != 2 || t.size(1) != frames || (t.size(0) != batch && t.size(0) != 1)) {
    throw InvalidInputError("PerFrameEulerStep: frame_timesteps " + ShapeString(frame_timesteps) +
                            " do not match x " + ShapeString(x) +
                            " (expected (B, 1, T), (B, T) or (T) with T = x.size(2))");
  }
  // diffusers: per_token_sigmas = t / 1000; lower = max(sigmas * (sigmas < per_token - 1e-6));
  // dt = per_token - lower; prev = sample + dt * (-v). All float32.
  const at::Tensor sigma = at::div(t, static_cast<double>(kNumTrainTimesteps));  // (B', T)
  const at::Tensor table = schedule.SigmasTensor(x.device()).view({-1, 1, 1});   // (S, 1, 1)
  const at::Tensor below = at::lt(table, at::sub(sigma, kPerTokenSigmaTolerance).unsqueeze(0));
  const at::Tensor lower = at::mul(below, table).amax(0);  // (B', T)
  const at::Tensor dt = at::sub(sigma, lower).view({t.size(0), 1, frames, 1, 1});
  const at::Tensor stepped = at::sub(x.to(at::kFloat), at::mul(dt, v.to(at::kFloat)));
  // Frames with dt == 0 keep x exactly (the reference restores / masks them).
  return at::where(at::eq(dt, 0.0), x, stepped.to(x.scalar_type()));
}

// --- frame counts and chunk plans ----------------------------------------------------------

int64_t LatentFramesForPixelFrames(int64_t pixel_frames, int64_t temporal_stride) {
  if (temporal_stride < 1) {
    throw InvalidInputError("LatentFramesForPixelFrames: temporal stride must be >= 1, got " +
                            std::to_string(temporal_stride));
  }
  if (pixel_frames < 1 || (pixel_frames - 1) % temporal_stride != 0) {
    throw InvalidInputError("LatentFramesForPixelFrames: " + std::to_string(pixel_frames) +
                            " pixel frames is not " + std::to_string(temporal_stride) + "k+1 (1, " +
                            FirstMultiples(temporal_stride, 3) + ")");
  }
  return (pixel_frames - 1) / temporal_stride + 1;
}

int64_t PixelFramesForLatentFrames(int64_t latent_frames, int64_t temporal_stride) {
  if (latent_frames < 1 || temporal_stride < 1) {
    throw InvalidInputError(
        "PixelFramesForLatentFrames: need latent_frames >= 1 and stride >= 1, got " +
        std::to_string(latent_frames) + " and " + std::to_string(temporal_stride));
  }
  return temporal_stride * (latent_frames - 1) + 1;
}

std::vector<FrameRange> StreamingChunkPlan(int64_t num_latent_frames, int64_t chunk_frames) {
  if (chunk_frames < 1) {
    throw InvalidInputError("StreamingChunkPlan: chunk_frames must be >= 1, got " +
                            std::to_string(chunk_frames));
  }
  const int64_t c = chunk_frames;
  if (num_latent_frames <= c || (num_latent_frames - 1) % c != 0) {
    throw InvalidInputError(
        "StreamingChunkPlan: " + std::to_string(num_latent_frames) + " latent frames is not " +
        std::to_string(c) + "k+1 with k >= 1 (" + FirstMultiples(c, 3) +
        "): the first chunk holds the condition frame + " + std::to_string(c) +
        " generated frames and every later chunk " + std::to_string(c) +
        " frames; pixel frames must be " + std::to_string(kVaeTemporalStride * c) + "k+1 (" +
        FirstMultiples(kVaeTemporalStride * c, 3) + ")");
  }
  std::vector<FrameRange> plan;
  plan.reserve(static_cast<size_t>((num_latent_frames - 1) / c));
  plan.push_back({0, c + 1});
  for (int64_t b = c + 1; b < num_latent_frames; b += c) plan.push_back({b, b + c});
  return plan;
}

// --- per-frame timesteps -------------------------------------------------------------------

at::Tensor FrameTimesteps(int64_t batch, FrameRange frames, double timestep,
                          const std::vector<int64_t>& condition_frames, c10::Device device) {
  if (batch < 1) {
    throw InvalidInputError("FrameTimesteps: batch must be >= 1, got " + std::to_string(batch));
  }
  if (frames.begin < 0 || frames.size() < 1) {
    throw InvalidInputError("FrameTimesteps: bad frame range [" + std::to_string(frames.begin) +
                            ", " + std::to_string(frames.end) + ")");
  }
  if (!(timestep >= 0.0) || !std::isfinite(timestep)) {
    throw InvalidInputError("FrameTimesteps: timestep must be finite and >= 0, got " +
                            std::to_string(timestep));
  }
  std::vector<float> row(static_cast<size_t>(frames.size()), static_cast<float>(timestep));
  for (int64_t f : condition_frames) {
    if (frames.contains(f)) row[static_cast<size_t>(f - frames.begin)] = 0.0f;
  }
  at::Tensor t = FloatVectorTensor(row, c10::Device(c10::kCPU))
                     .view({1, 1, frames.size()})
                     .expand({batch, 1, frames.size()})
                     .contiguous();
  return device.is_cpu() ? t : t.to(device);
}

// --- chunk-causal teacher ------------------------------------------------------------------

int64_t ChunkCausalTeacherTable::ActiveChunks(int64_t global_step) const {
  if (global_step < 0 || global_step >= total_steps) return 0;
  int64_t n = 0;
  for (const auto& row : timesteps) {
    if (row[static_cast<size_t>(global_step)] >= 0.0f) ++n;
  }
  return n;
}

ChunkCausalTeacherTable ChunkCausalTeacherSchedule(const SigmaSchedule& schedule,
                                                   int64_t num_chunks, double interval_k) {
  const int64_t steps = schedule.num_steps();
  if (steps < 1) throw InvalidInputError("ChunkCausalTeacherSchedule: empty schedule");
  if (num_chunks < 1) {
    throw InvalidInputError("ChunkCausalTeacherSchedule: num_chunks must be >= 1, got " +
                            std::to_string(num_chunks));
  }
  if (!(interval_k > 0.0) || !std::isfinite(interval_k)) {
    throw InvalidInputError("ChunkCausalTeacherSchedule: interval_k must be positive, got " +
                            std::to_string(interval_k));
  }
  ChunkCausalTeacherTable out;
  for (int64_t i = 0; i < num_chunks; ++i) {
    // Python: int(i * float(interval_k) * steps), evaluated left to right in float64.
    const double start = Rounded(static_cast<double>(i) * interval_k) * static_cast<double>(steps);
    out.chunk_start_steps.push_back(static_cast<int64_t>(start));
  }
  out.total_steps = out.chunk_start_steps.back() + steps;
  for (int64_t i = 0; i < num_chunks; ++i) {
    std::vector<float> row(static_cast<size_t>(out.total_steps), -1.0f);
    const int64_t s0 = out.chunk_start_steps[static_cast<size_t>(i)];
    for (int64_t s = 0; s < steps; ++s) {
      row[static_cast<size_t>(s0 + s)] = schedule.timesteps[static_cast<size_t>(s)];
    }
    for (int64_t g = s0 + steps; g < out.total_steps; ++g) row[static_cast<size_t>(g)] = 0.0f;
    out.timesteps.push_back(std::move(row));
  }
  return out;
}

ChunkCausalTeacherTable ChunkCausalTeacherSchedule(const SigmaSchedule& schedule,
                                                   int64_t num_chunks) {
  if (num_chunks < 1) {
    throw InvalidInputError("ChunkCausalTeacherSchedule: num_chunks must be >= 1, got " +
                            std::to_string(num_chunks));
  }
  return ChunkCausalTeacherSchedule(schedule, num_chunks, 1.0 / static_cast<double>(num_chunks));
}

// --- softmax KV window ---------------------------------------------------------------------

std::vector<int64_t> CachedChunksFor(int64_t chunk, const KvWindowRule& rule) {
  if (chunk < 0) {
    throw InvalidInputError("CachedChunksFor: chunk must be >= 0, got " + std::to_string(chunk));
  }
  std::vector<int64_t> out;
  if (chunk == 0) return out;
  const int64_t n = rule.num_cached_blocks;
  const int64_t start = n > 0 ? std::max<int64_t>(chunk - n, 0) : 0;
  if (rule.sink && n > 0) {
    const int64_t s = std::max<int64_t>(chunk - n + 1, 0);
    if (s > 0) {
      out.push_back(0);
      for (int64_t c = s; c < chunk; ++c) out.push_back(c);
      return out;
    }
  }
  for (int64_t c = start; c < chunk; ++c) out.push_back(c);
  return out;
}

std::vector<int64_t> CachedFramesFor(const std::vector<FrameRange>& plan, int64_t chunk,
                                     const KvWindowRule& rule) {
  if (chunk < 0 || chunk > static_cast<int64_t>(plan.size())) {
    throw InvalidInputError("CachedFramesFor: chunk " + std::to_string(chunk) +
                            " outside a plan of " + std::to_string(plan.size()) + " chunks");
  }
  std::vector<int64_t> frames;
  for (int64_t c : CachedChunksFor(chunk, rule)) {
    const FrameRange& r = plan[static_cast<size_t>(c)];
    for (int64_t f = r.begin; f < r.end; ++f) frames.push_back(f);
  }
  return frames;
}

std::vector<std::vector<int64_t>> CachedFramesAfterEachChunk(const std::vector<FrameRange>& plan,
                                                             const KvWindowRule& rule) {
  std::vector<std::vector<int64_t>> out;
  out.reserve(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    out.push_back(CachedFramesFor(plan, static_cast<int64_t>(i) + 1, rule));
  }
  return out;
}

int64_t MaxKeyWindowFrames(const std::vector<FrameRange>& plan, const KvWindowRule& rule) {
  int64_t most = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const int64_t cached =
        static_cast<int64_t>(CachedFramesFor(plan, static_cast<int64_t>(i), rule).size());
    most = std::max(most, cached + plan[i].size());
  }
  return most;
}

}  // namespace wmserve::worker::sana
