// Stage-1 rollouts (see rollout.h).
#include "worker/models/sana/rollout.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>

#include "worker/models/sana/ops.h"

namespace wmserve::worker::sana {
namespace {

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
    Bad(who, "first_latent has shape " + ShapeOf(x0) + ", expected (1, " +
                 std::to_string(cfg.in_channels) + ", 1, H, W)");
  }
  const int64_t h = x0.size(3), w = x0.size(4);
  int64_t frames = -1;
  if (in.camera_conditions.defined()) {
    if (in.camera_conditions.dim() != 3 || in.camera_conditions.size(0) != 1 ||
        in.camera_conditions.size(2) != 20 || in.camera_conditions.size(1) < 1) {
      Bad(who, "camera_conditions has shape " + ShapeOf(in.camera_conditions) +
                   ", expected (1, T, 20)");
    }
    frames = in.camera_conditions.size(1);
  }
  if (in.chunk_plucker.defined()) {
    const at::Tensor& p = in.chunk_plucker;
    if (p.dim() != 5 || p.size(0) != 1 || p.size(1) != cfg.chunk_plucker_channels ||
        p.size(3) != h || p.size(4) != w || (frames >= 0 && p.size(2) != frames)) {
      Bad(who, "chunk_plucker has shape " + ShapeOf(p) + ", expected (1, " +
                   std::to_string(cfg.chunk_plucker_channels) + ", T, " + std::to_string(h) +
                   ", " + std::to_string(w) + ") with T = camera_conditions' frames");
    }
    frames = p.size(2);
  }
  if (frames < 1) Bad(who, "camera_conditions and chunk_plucker are both undefined: no T");
  auto check_text = [&](const at::Tensor& text, const at::Tensor& mask, const char* name) {
    if (!text.defined() || text.dim() != 4 || text.size(0) != 1 || text.size(1) != 1 ||
        text.size(3) != cfg.caption_channels || text.size(2) < 1) {
      Bad(who, std::string(name) + " has shape " + ShapeOf(text) + ", expected (1, 1, L, " +
                   std::to_string(cfg.caption_channels) + ")");
    }
    if (mask.defined() && mask.sizes() != c10::IntArrayRef({1, text.size(2)})) {
      Bad(who, std::string(name) + " mask has shape " + ShapeOf(mask) + ", expected (1, " +
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
  at::Generator gen = SeededGenerator(device, seed);
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
  ChunkOutcome outcome = std::move(NextChunkBatch({this}, {on_step}).front());
  if (outcome.cancelled) {
    throw RolloutCancelled("StreamingRollout::NextChunk: cancelled before forward " +
                           std::to_string(outcome.cancelled_before) + " of " +
                           std::to_string(schedule_.num_steps() + 1));
  }
  return outcome.latents;
}

StreamingBatchShape StreamingRollout::NextChunkShape() const {
  if (done()) Bad("StreamingRollout::NextChunkShape", "all chunks are done");
  return StreamingBatchShapeOf(cache_, plan_[next_chunk_].size());
}

std::vector<StreamingRollout::ChunkOutcome> StreamingRollout::NextChunkBatch(
    const std::vector<StreamingRollout*>& rollouts, const std::vector<StepCallback>& on_step) {
  constexpr const char* kWho = "StreamingRollout::NextChunkBatch";
  if (rollouts.empty() || on_step.size() != rollouts.size()) {
    Bad(kWho, "needs at least one rollout and one callback per rollout");
  }
  const StreamingRollout& lead = *rollouts.front();
  for (const StreamingRollout* r : rollouts) {
    if (r->done()) {
      Bad(kWho, "all " + std::to_string(r->num_chunks()) + " chunks are done");
    }
    if (&r->model_ != &lead.model_) Bad(kWho, "the rollouts do not share one model");
  }
  const StreamingBatchShape shape = lead.NextChunkShape();
  for (size_t i = 1; i < rollouts.size(); ++i) {
    if (rollouts[i]->NextChunkShape() != shape) {
      Bad(kWho, "rollout " + std::to_string(i) + "'s next chunk (" +
                    rollouts[i]->NextChunkShape().ToString() + ") cannot share a batch with (" +
                    shape.ToString() + ")");
    }
  }
  const SanaTransformer& model = lead.model_;
  const c10::Device device = model.device();
  const SigmaSchedule& schedule = lead.schedule_;
  const int denoise = static_cast<int>(schedule.num_steps());
  const int total = denoise + 1;

  // Per member: its chunk's inputs, text padded to the batch's longest prompt.
  struct Member {
    StreamingRollout* rollout;
    size_t index;
    FrameRange range;
    at::Tensor cam, plucker, text, mask, x;
  };
  int64_t text_len = 0;
  bool any_mask = false;
  for (const StreamingRollout* r : rollouts) {
    text_len = std::max(text_len, r->in_.text.size(2));
    any_mask = any_mask || r->in_.text_mask.defined();
  }
  std::vector<Member> active;
  for (size_t i = 0; i < rollouts.size(); ++i) {
    StreamingRollout* r = rollouts[i];
    Member m{r, i, r->plan_[r->next_chunk_], {}, {}, {}, {}, {}};
    m.cam = Frames(r->in_.camera_conditions, 1, m.range);
    m.plucker = Frames(r->in_.chunk_plucker, 2, m.range);
    const int64_t pad = text_len - r->in_.text.size(2);
    m.text = pad ? at::constant_pad_nd(r->in_.text, {0, 0, 0, pad}, 0.0) : r->in_.text;
    if (any_mask || rollouts.size() > 1) {
      const at::Tensor mask = MaskOrOnes(r->in_.text_mask, r->in_.text).to(at::kLong);
      m.mask = pad ? at::constant_pad_nd(mask, {0, pad}, 0.0) : mask;
    }
    m.x = r->noise_.narrow(2, m.range.begin, m.range.size()).clone();
    active.push_back(std::move(m));
  }
  // Only one rollout and no mask of its own: keep "no mask" (the solo path's exact inputs).
  if (rollouts.size() == 1 && !any_mask) active.front().mask = at::Tensor();

  std::vector<ChunkOutcome> outcomes(rollouts.size());
  // Runs every active member's callback before forward `step`; drops those that cancel.
  auto poll = [&](int step) {
    std::vector<Member> staying;
    for (Member& m : active) {
      const StepCallback& cb = on_step[m.index];
      if (cb && !cb(step, total)) {
        outcomes[m.index].cancelled = true;
        outcomes[m.index].cancelled_before = step;
      } else {
        staying.push_back(std::move(m));
      }
    }
    active = std::move(staying);
    return !active.empty();
  };
  auto cat = [&](at::Tensor Member::*field) {
    if (!(active.front().*field).defined()) return at::Tensor();
    if (active.size() == 1) return active.front().*field;
    std::vector<at::Tensor> rows;
    for (const Member& m : active) rows.push_back(m.*field);
    return at::cat(rows, 0);
  };
  auto caches = [&] {
    std::vector<SanaStreamingCache*> out;
    for (Member& m : active) out.push_back(&m.rollout->cache_);
    return out;
  };
  auto timesteps = [&](double t) {
    std::vector<at::Tensor> rows;
    for (const Member& m : active) rows.push_back(FrameTimesteps(1, m.range, t, {0}, device));
    return active.size() == 1 ? rows.front() : at::cat(rows, 0);
  };

  for (int step = 0; step < denoise; ++step) {
    if (!poll(step)) return outcomes;
    const at::Tensor ts = timesteps(schedule.timesteps[step]);
    const at::Tensor x = cat(&Member::x);
    const at::Tensor v = model.ForwardChunkBatch(x, ts, cat(&Member::text), cat(&Member::mask),
                                                 cat(&Member::cam), cat(&Member::plucker),
                                                 caches(), /*save_state=*/false, lead.options_);
    const at::Tensor next = PerFrameEulerStep(x, v, ts, schedule);
    for (size_t row = 0; row < active.size(); ++row) {
      Member& m = active[row];
      m.x = active.size() == 1 ? next : next.narrow(0, static_cast<int64_t>(row), 1).clone();
      if (m.range.contains(0)) m.x.narrow(2, 0, 1).copy_(m.rollout->in_.first_latent);
    }
  }
  // KV-save pass: the clean chunk at t = 0 writes each member's cache; its output is unused.
  if (!poll(denoise)) return outcomes;
  model.ForwardChunkBatch(cat(&Member::x), timesteps(0.0), cat(&Member::text),
                          cat(&Member::mask), cat(&Member::cam), cat(&Member::plucker), caches(),
                          /*save_state=*/true, lead.options_);
  for (Member& m : active) {
    ++m.rollout->next_chunk_;
    outcomes[m.index].latents = std::move(m.x);
  }
  return outcomes;
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
