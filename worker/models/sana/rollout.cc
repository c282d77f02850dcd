// Stage-1 rollouts (see rollout.h).
#include "worker/models/sana/rollout.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <c10/core/TensorOptions.h>

#include <mutex>
#include <string>
#include <utility>

namespace wmserve::worker::sana {
namespace {

std::string Shape(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

[[noreturn]] void Bad(const char* who, const std::string& message) {
  throw InvalidInputError(std::string(who) + ": " + message);
}

// Checks the inputs against the model and returns T (latent frames).
int64_t CheckInputs(const char* who, const SanaTransformer& model, const RolloutInputs& in,
                    bool need_uncond) {
  const SanaConfig& cfg = model.config();
  if (!model.loaded()) Bad(who, "the model has no weights loaded");
  const at::Tensor& x0 = in.first_latent;
  if (!x0.defined() || x0.dim() != 5 || x0.size(0) != 1 || x0.size(1) != cfg.in_channels ||
      x0.size(2) != 1 || x0.size(3) < 1 || x0.size(4) < 1) {
    Bad(who, "first_latent has shape " + Shape(x0) + ", expected (1, " +
                 std::to_string(cfg.in_channels) + ", 1, H, W)");
  }
  const int64_t h = x0.size(3), w = x0.size(4);
  int64_t frames = -1;
  if (in.camera_conditions.defined()) {
    if (in.camera_conditions.dim() != 3 || in.camera_conditions.size(0) != 1 ||
        in.camera_conditions.size(2) != 20 || in.camera_conditions.size(1) < 1) {
      Bad(who, "camera_conditions has shape " + Shape(in.camera_conditions) +
                   ", expected (1, T, 20)");
    }
    frames = in.camera_conditions.size(1);
  }
  if (in.chunk_plucker.defined()) {
    const at::Tensor& p = in.chunk_plucker;
    if (p.dim() != 5 || p.size(0) != 1 || p.size(1) != cfg.chunk_plucker_channels ||
        p.size(3) != h || p.size(4) != w || (frames >= 0 && p.size(2) != frames)) {
      Bad(who, "chunk_plucker has shape " + Shape(p) + ", expected (1, " +
                   std::to_string(cfg.chunk_plucker_channels) + ", T, " + std::to_string(h) +
                   ", " + std::to_string(w) + ") with T = camera_conditions' frames");
    }
    frames = p.size(2);
  }
  if (frames < 1) Bad(who, "camera_conditions and chunk_plucker are both undefined: no T");
  auto check_text = [&](const at::Tensor& text, const at::Tensor& mask, const char* name) {
    if (!text.defined() || text.dim() != 4 || text.size(0) != 1 || text.size(1) != 1 ||
        text.size(3) != cfg.caption_channels || text.size(2) < 1) {
      Bad(who, std::string(name) + " has shape " + Shape(text) + ", expected (1, 1, L, " +
                   std::to_string(cfg.caption_channels) + ")");
    }
    if (mask.defined() && mask.sizes() != c10::IntArrayRef({1, text.size(2)})) {
      Bad(who, std::string(name) + " mask has shape " + Shape(mask) + ", expected (1, " +
                   std::to_string(text.size(2)) + ")");
    }
  };
  check_text(in.text, in.text_mask, "text");
  if (need_uncond) check_text(in.uncond_text, in.uncond_mask, "uncond_text");
  return frames;
}

at::Tensor Frames(const at::Tensor& t, int64_t dim, FrameRange r) {
  return t.defined() ? t.narrow(dim, r.begin, r.size()) : at::Tensor();
}

void MaybeCancel(const StepCallback& on_step, int step, int total, const char* who) {
  if (on_step && !on_step(step, total)) {
    throw RolloutCancelled(std::string(who) + ": cancelled before forward " +
                           std::to_string(step) + " of " + std::to_string(total));
  }
}

// All-ones mask for text without one (keeps every token); undefined stays undefined.
at::Tensor MaskOrOnes(const at::Tensor& mask, const at::Tensor& text) {
  if (mask.defined()) return mask;
  return at::ones({1, text.size(2)}, at::TensorOptions().dtype(at::kLong));
}

}  // namespace

at::Tensor RolloutInitialNoise(const at::Tensor& first_latent, int64_t frames, uint64_t seed,
                               c10::Device device) {
  at::Generator gen = at::globalContext().defaultGenerator(device).clone();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  // (The sampling kernels lock the generator themselves.)
  at::Tensor z =
      at::randn({1, first_latent.size(1), frames, first_latent.size(3), first_latent.size(4)},
                gen, at::TensorOptions().dtype(at::kFloat).device(device));
  z.narrow(2, 0, 1).copy_(first_latent);
  return z;
}

// --- streaming -------------------------------------------------------------------------------

StreamingRollout::StreamingRollout(const SanaTransformer& model, RolloutInputs inputs)
    : model_(model), in_(std::move(inputs)) {
  frames_ = CheckInputs("StreamingRollout", model_, in_, /*need_uncond=*/false);
  plan_ = StreamingChunkPlan(frames_, model_.config().chunk_size);
  schedule_ = StreamingSchedule();
  options_ = StreamingForwardOptions();
  noise_ = RolloutInitialNoise(in_.first_latent, frames_, in_.seed, model_.device());
  in_.first_latent = in_.first_latent.to(model_.device(), at::kFloat);
}

int StreamingRollout::num_chunks() const { return static_cast<int>(plan_.size()); }

FrameRange StreamingRollout::chunk(int i) const {
  if (i < 0 || i >= num_chunks()) {
    Bad("StreamingRollout::chunk", "chunk " + std::to_string(i) + " outside [0, " +
                                       std::to_string(num_chunks()) + ")");
  }
  return plan_[i];
}

at::Tensor StreamingRollout::NextChunk(const StepCallback& on_step) {
  constexpr const char* kWho = "StreamingRollout::NextChunk";
  if (next_chunk_ >= num_chunks()) {
    Bad(kWho, "all " + std::to_string(num_chunks()) + " chunks are done");
  }
  const FrameRange r = plan_[next_chunk_];
  const c10::Device device = model_.device();
  const at::Tensor cam = Frames(in_.camera_conditions, 1, r);
  const at::Tensor plucker = Frames(in_.chunk_plucker, 2, r);
  const bool has_condition = r.contains(0);
  const int denoise = static_cast<int>(schedule_.num_steps());
  const int total = denoise + 1;

  at::Tensor x = noise_.narrow(2, r.begin, r.size()).clone();
  for (int step = 0; step < denoise; ++step) {
    MaybeCancel(on_step, step, total, kWho);
    const at::Tensor ts = FrameTimesteps(1, r, schedule_.timesteps[step], {0}, device);
    const at::Tensor v = model_.ForwardChunk(x, ts, in_.text, in_.text_mask, cam, plucker,
                                             r.begin, cache_, /*save_state=*/false, options_);
    x = PerFrameEulerStep(x, v, ts, schedule_);
    if (has_condition) x.narrow(2, 0, 1).copy_(in_.first_latent);
  }
  // KV-save pass: the clean chunk at t = 0 writes the cache; its output is not used.
  MaybeCancel(on_step, denoise, total, kWho);
  const at::Tensor ts0 = FrameTimesteps(1, r, 0.0, {0}, device);
  model_.ForwardChunk(x, ts0, in_.text, in_.text_mask, cam, plucker, r.begin, cache_,
                      /*save_state=*/true, options_);
  ++next_chunk_;
  return x;
}

int64_t StreamingRollout::cache_bytes() const { return cache_.bytes(); }

// --- bidirectional ---------------------------------------------------------------------------

BidirectionalRollout::BidirectionalRollout(const SanaTransformer& model, RolloutInputs inputs,
                                           int steps, double cfg_scale)
    : model_(model), in_(std::move(inputs)), steps_(steps), cfg_scale_(cfg_scale) {
  const bool cfg = cfg_scale_ != 1.0 && in_.uncond_text.defined();
  frames_ = CheckInputs("BidirectionalRollout", model_, in_, cfg);
  schedule_ = BidirectionalSchedule(steps_, kBidirectionalShift);
}

at::Tensor BidirectionalRollout::Run(const StepCallback& on_step) {
  constexpr const char* kWho = "BidirectionalRollout::Run";
  const c10::Device device = model_.device();
  const bool cfg = cfg_scale_ != 1.0 && in_.uncond_text.defined();
  const FrameRange all{0, frames_};
  const at::Tensor first = in_.first_latent.to(device, at::kFloat);
  at::Tensor x = RolloutInitialNoise(first, frames_, in_.seed, device);

  // The CFG batch [uncond, cond]: text (and masks) stacked, camera duplicated. Texts of
  // different lengths run as two forwards instead.
  const bool batched = cfg && in_.uncond_text.size(2) == in_.text.size(2);
  at::Tensor text2, mask2, cam2, plucker2;
  if (batched) {
    text2 = at::cat({in_.uncond_text.to(in_.text.scalar_type()), in_.text}, 0);
    if (in_.text_mask.defined() || in_.uncond_mask.defined()) {
      mask2 = at::cat({MaskOrOnes(in_.uncond_mask, in_.uncond_text).to(at::kLong),
                       MaskOrOnes(in_.text_mask, in_.text).to(at::kLong)},
                      0);
    }
    if (in_.camera_conditions.defined()) cam2 = in_.camera_conditions.repeat({2, 1, 1});
    if (in_.chunk_plucker.defined()) plucker2 = in_.chunk_plucker.repeat({2, 1, 1, 1, 1});
  }

  for (int step = 0; step < steps_; ++step) {
    MaybeCancel(on_step, step, steps_, kWho);
    const at::Tensor ts = FrameTimesteps(1, all, schedule_.timesteps[step], {0}, device);
    at::Tensor v;
    if (batched) {
      const at::Tensor out = model_.Forward(at::cat({x, x}, 0), ts.repeat({2, 1, 1}), text2,
                                            mask2, cam2, plucker2);
      v = CfgCombineBatched(out, cfg_scale_);
    } else if (cfg) {
      const at::Tensor vu = model_.Forward(x, ts, in_.uncond_text, in_.uncond_mask,
                                           in_.camera_conditions, in_.chunk_plucker);
      const at::Tensor vc = model_.Forward(x, ts, in_.text, in_.text_mask, in_.camera_conditions,
                                           in_.chunk_plucker);
      v = CfgCombine(vu, vc, cfg_scale_);
    } else {
      v = model_.Forward(x, ts, in_.text, in_.text_mask, in_.camera_conditions,
                         in_.chunk_plucker);
    }
    x = PerFrameEulerStep(x, v, ts, schedule_);
    x.narrow(2, 0, 1).copy_(first);
  }
  return x;
}

}  // namespace wmserve::worker::sana
