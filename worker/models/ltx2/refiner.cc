// SANA-WM's Stage-2 refiner: offline sink-bidirectional mode and the streaming chunk runner (see
// refiner.h).
#include "worker/models/ltx2/refiner.h"

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/ops.h"

namespace wmserve::worker::ltx2 {

using sana::InvalidInputError;
using sana::RolloutCancelled;

using sana::SeededGenerator;
using sana::ShapeOf;

namespace {

[[noreturn]] void BadInput(const std::string& where, const std::string& message) {
  throw InvalidInputError(where + ": " + message);
}

// A latent video (B, C, T, H, W) with the model's channel count; `frames` < 0 accepts any T >= 1.
void CheckLatents(const char* where, const char* what, const at::Tensor& t, int64_t channels) {
  if (!t.defined() || t.dim() != 5 || t.size(0) < 1 || t.size(1) != channels || t.size(2) < 1 ||
      t.size(3) < 1 || t.size(4) < 1) {
    BadInput(where, std::string(what) + " has shape " + ShapeOf(t) + ", expected (B, " +
                        std::to_string(channels) + ", T, H, W)");
  }
  if (!c10::isFloatingType(t.scalar_type())) {
    BadInput(where, std::string(what) + " is not a floating-point tensor");
  }
}

void CheckFinite(const char* where, const char* what, const at::Tensor& t) {
  if (!at::isfinite(t).all().item<bool>()) {
    BadInput(where, std::string(what) + " has non-finite values");
  }
}

// at::randn takes the generator's lock itself.
at::Tensor Randn(at::IntArrayRef shape, at::Generator& gen, const Ltx2Transformer& model) {
  return at::randn(shape, gen,
                   at::TensorOptions().dtype(model.dtype()).device(model.device()));
}

// Model timesteps sigma * multiplier of float32 sigma, rounded to float32 like the reference's
// float32 tensor product.
float ModelTimestep(const Ltx2Transformer& model, float sigma) {
  return static_cast<float>(static_cast<double>(sigma) *
                            model.config().timestep_scale_multiplier);
}

at::Tensor Sigma0d(float sigma, const at::Tensor& like) {
  return at::scalar_tensor(static_cast<double>(sigma), like.options().dtype(at::kFloat));
}

}  // namespace

// --- flow-matching arithmetic ------------------------------------------------------------------

at::Tensor X0FromVelocity(const at::Tensor& x, const at::Tensor& velocity, float sigma) {
  return x.to(at::kFloat).sub(velocity.to(at::kFloat).mul(static_cast<double>(sigma)));
}

at::Tensor EulerStepVelocityForm(const at::Tensor& x, const at::Tensor& x0, float sigma,
                                 float sigma_next) {
  // `velocity = (noisy - denoised) / sigma; next = noisy + velocity * (sigma_next - sigma)` with
  // 0-dim float32 sigma tensors (a true division, as the reference on every device).
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor velocity = xf.sub(x0.to(at::kFloat)).div(Sigma0d(sigma, xf));
  const float step = sigma_next - sigma;  // float32, like sigmas_t[k + 1] - sigma
  return xf.add(velocity.mul(static_cast<double>(step)));
}

at::Tensor EulerStepRatioForm(const at::Tensor& x, const at::Tensor& x0, float sigma,
                              float sigma_next) {
  if (sigma <= 1.0e-6f) return x0.to(at::kFloat);
  const double ratio = static_cast<double>(sigma_next) / static_cast<double>(sigma);
  return x.to(at::kFloat).mul(ratio).add(x0.to(at::kFloat).mul(1.0 - ratio));
}

at::Tensor Renoise(const at::Tensor& z, const at::Tensor& eps, float sigma) {
  const double s = static_cast<double>(sigma);
  return z.to(at::kFloat).mul(1.0 - s).add(eps.to(at::kFloat).mul(s));
}

// --- offline mode ------------------------------------------------------------------------------

at::Tensor RefineOffline(const Ltx2Transformer& model, const at::Tensor& z, const at::Tensor& eps,
                         const Ltx2TextContext& text, const RefinerOptions& options,
                         const RefinerStepCallback& on_step, const RefinerTap& tap) {
  constexpr const char* kWhere = "RefineOffline";
  options.Validate();
  const TransformerConfig& cfg = model.config();
  CheckLatents(kWhere, "z", z, cfg.in_channels);
  const int64_t b = z.size(0), frames = z.size(2), height = z.size(3), width = z.size(4);
  const int64_t sink = options.sink_size;
  if (frames <= sink) {
    BadInput(kWhere, "z has " + std::to_string(frames) + " frames, expected more than sink_size = " +
                         std::to_string(sink));
  }
  const int64_t current = frames - sink;
  if (!eps.defined() || eps.sizes() != c10::IntArrayRef({b, cfg.in_channels, current, height, width})) {
    BadInput(kWhere, "eps has shape " + ShapeOf(eps) + ", expected (B, C, T - sink_size, H, W) = [" +
                         std::to_string(b) + ", " + std::to_string(cfg.in_channels) + ", " +
                         std::to_string(current) + ", " + std::to_string(height) + ", " +
                         std::to_string(width) + "]");
  }
  if (text.batch() != b) {
    BadInput(kWhere, "text context has batch " + std::to_string(text.batch()) + ", z has " +
                         std::to_string(b));
  }
  CheckFinite(kWhere, "z", z);
  CheckFinite(kWhere, "eps", eps);

  at::NoGradGuard no_grad;
  const c10::ScalarType dtype = model.dtype();
  const at::Tensor zd = z.to(model.device(), dtype);
  const at::Tensor sink_latents = zd.narrow(2, 0, sink);
  const at::Tensor sink_tokens = PackLatentTokens(sink_latents);
  const int64_t per_frame = height * width;
  const int64_t n_sink = sink * per_frame, n_current = current * per_frame;
  const std::vector<float>& sigmas = options.sigmas;

  // `noisy = (1 - sigma_0) * current + sigma_0 * eps`, in the model dtype as the reference.
  const double s0 = static_cast<double>(sigmas[0]);
  at::Tensor x = zd.narrow(2, sink, current).mul(1.0 - s0).add(eps.to(model.device(), dtype).mul(s0));

  // RoPE over contiguous frames 0..T-1; sink tokens at timestep 0, current tokens at sigma.
  const Ltx2RopeTable rope = model.Rope(FrameRange(0, frames), height, width, options.fps);
  Ltx2ForwardOptions forward;
  forward.pattern = AttentionPattern::kSinkCurrent;
  forward.n_context_tokens = n_sink;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(model.device());

  for (int k = 0; k < options.steps(); ++k) {
    if (on_step && !on_step(k)) {
      throw RolloutCancelled("RefineOffline: cancelled before step " + std::to_string(k));
    }
    if (tap) tap("step." + std::to_string(k) + ".x_t", x);
    const float sigma = sigmas[static_cast<size_t>(k)];
    const float sigma_next = sigmas[static_cast<size_t>(k) + 1];
    at::Tensor values = at::zeros({b, 2}, f32);
    values.select(1, 1).fill_(static_cast<double>(ModelTimestep(model, sigma)));
    const Ltx2Timesteps timesteps = Ltx2Timesteps::Grouped(values, {n_sink, n_current});

    const at::Tensor noisy_tokens = PackLatentTokens(x);
    const at::Tensor velocity =
        model.Forward(at::cat({sink_tokens, noisy_tokens}, 1), timesteps, rope, text, forward)
            .velocity;
    // Only the current tokens' x0 is used (the sink's is its input: t = 0).
    const at::Tensor x0 =
        X0FromVelocity(noisy_tokens, velocity.narrow(1, n_sink, n_current), sigma).to(dtype);
    if (tap) tap("step." + std::to_string(k) + ".x0", x0);
    x = UnpackLatentTokens(EulerStepVelocityForm(noisy_tokens, x0, sigma, sigma_next).to(dtype),
                           current, height, width);
  }
  return at::cat({sink_latents, x}, 2);
}

at::Tensor RefineOffline(const Ltx2Transformer& model, const at::Tensor& z,
                         const Ltx2TextContext& text, const RefinerOptions& options,
                         const RefinerStepCallback& on_step) {
  options.Validate();
  CheckLatents("RefineOffline", "z", z, model.config().in_channels);
  if (z.size(2) <= options.sink_size) {
    BadInput("RefineOffline", "z has " + std::to_string(z.size(2)) +
                                  " frames, expected more than sink_size = " +
                                  std::to_string(options.sink_size));
  }
  at::Generator gen = SeededGenerator(model.device(), options.seed);
  const at::Tensor eps = Randn({z.size(0), z.size(1), z.size(2) - options.sink_size, z.size(3),
                                z.size(4)},
                               gen, model);
  return RefineOffline(model, z, eps, text, options, on_step);
}

// --- streaming mode ----------------------------------------------------------------------------

RefinerChunkRunner::RefinerChunkRunner(std::shared_ptr<const Ltx2Transformer> model,
                                       Ltx2TextContext text, RefinerOptions options)
    : model_(std::move(model)), text_(std::move(text)), options_(std::move(options)) {
  options_.Validate();
  if (!model_ || !model_->loaded()) {
    throw std::invalid_argument("RefinerChunkRunner: the transformer has no weights loaded");
  }
  if (text_.batch() < 1 || text_.projected.size(2) != model_->config().inner_dim()) {
    BadInput("RefinerChunkRunner", "text context has projected text " + ShapeOf(text_.projected) +
                                       ", expected (B, L, " +
                                       std::to_string(model_->config().inner_dim()) + ")");
  }
  generator_ = SeededGenerator(model_->device(), options_.seed);
}

void RefinerChunkRunner::Step(const RefinerStepCallback& on_step, int step) {
  if (on_step && !on_step(step)) {
    cancelled_ = true;
    throw RolloutCancelled("RefinerChunkRunner: cancelled before step " + std::to_string(step) +
                           " of block " + std::to_string(blocks_done_));
  }
}

void RefinerChunkRunner::CheckUsable(const char* where) const {
  if (cancelled_) {
    throw RolloutCancelled(std::string(where) + ": the rollout was cancelled earlier");
  }
}

void RefinerChunkRunner::CaptureSink(const at::Tensor& z_sink, const RefinerStepCallback& on_step) {
  constexpr const char* kWhere = "RefinerChunkRunner::CaptureSink";
  CheckUsable(kWhere);
  const Ltx2Transformer& model = *model_;
  const TransformerConfig& cfg = model.config();
  if (sink_captured()) BadInput(kWhere, "the sink was already captured");
  CheckLatents(kWhere, "z_sink", z_sink, cfg.in_channels);
  if (z_sink.size(2) != options_.sink_size) {
    BadInput(kWhere, "z_sink has " + std::to_string(z_sink.size(2)) +
                         " frames, expected sink_size = " + std::to_string(options_.sink_size));
  }
  if (z_sink.size(0) != text_.batch()) {
    BadInput(kWhere, "z_sink has batch " + std::to_string(z_sink.size(0)) +
                         ", the text context " + std::to_string(text_.batch()));
  }
  CheckFinite(kWhere, "z_sink", z_sink);
  Step(on_step, 0);

  at::NoGradGuard no_grad;
  const int64_t b = z_sink.size(0), height = z_sink.size(3), width = z_sink.size(4);
  const int64_t per_frame = height * width, n_sink = options_.sink_size * per_frame;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(model.device());
  // `_capture_block_kv(capture_mode="pre_rope")`: the clean sink alone, timestep 0, positions
  // [0, sink_size), plain attention, no output projection.
  Ltx2ForwardOptions forward;
  forward.capture = KvCapture::kPreRope;
  forward.skip_output = true;
  Ltx2ForwardResult captured = model.Forward(
      PackLatentTokens(z_sink), Ltx2Timesteps::Uniform(at::zeros({b}, f32), n_sink),
      model.Rope(FrameRange(0, options_.sink_size), height, width, options_.fps), text_, forward);

  // Workspaces [sink | history cap | block]; the sink V rows never change.
  const int64_t cap = std::max(options_.history_cap_frames(), 0);
  const int64_t rows = (options_.sink_size + cap + options_.block_size) * per_frame;
  const auto opts = at::TensorOptions().dtype(model.dtype()).device(model.device());
  std::vector<Ltx2LayerKv> workspace(static_cast<size_t>(cfg.num_layers));
  for (size_t l = 0; l < workspace.size(); ++l) {
    workspace[l].k = at::empty({b, rows, cfg.inner_dim()}, opts);
    workspace[l].v = at::empty({b, rows, cfg.inner_dim()}, opts);
    workspace[l].v.narrow(1, 0, n_sink).copy_(captured.captured[l].v);
  }
  batch_ = b;
  height_ = height;
  width_ = width;
  tokens_per_frame_ = per_frame;
  workspace_ = std::move(workspace);
  sink_kv_ = std::move(captured.captured);
}

void RefinerChunkRunner::CheckBlock(const char* where, const at::Tensor& z_block) const {
  CheckUsable(where);
  const TransformerConfig& cfg = model_->config();
  if (!sink_captured()) BadInput(where, "CaptureSink must run before the first block");
  if (short_block_done_) {
    BadInput(where, "the previous block was shorter than block_size = " +
                        std::to_string(options_.block_size) + ", so it was the last one");
  }
  CheckLatents(where, "z_block", z_block, cfg.in_channels);
  if (z_block.size(0) != batch_ || z_block.size(3) != height_ || z_block.size(4) != width_ ||
      z_block.size(2) > options_.block_size) {
    BadInput(where, "z_block has shape " + ShapeOf(z_block) + ", expected (B=" +
                        std::to_string(batch_) + ", " + std::to_string(cfg.in_channels) + ", 1.." +
                        std::to_string(options_.block_size) + ", " + std::to_string(height_) +
                        ", " + std::to_string(width_) + ") like the sink");
  }
  CheckFinite(where, "z_block", z_block);
}

at::Tensor RefinerChunkRunner::RefineBlock(const at::Tensor& z_block,
                                           const RefinerStepCallback& on_step,
                                           const RefinerTap& tap) {
  CheckBlock("RefinerChunkRunner::RefineBlock", z_block);
  // One draw per block, in block order, from the runner's generator (spec §3.1 "Re-noising");
  // only for a block that is accepted.
  const at::Tensor eps = Randn(z_block.sizes(), generator_, *model_);
  return RefineBlockImpl(z_block, eps, on_step, tap);
}

at::Tensor RefinerChunkRunner::RefineBlock(const at::Tensor& z_block, const at::Tensor& eps,
                                           const RefinerStepCallback& on_step,
                                           const RefinerTap& tap) {
  constexpr const char* kWhere = "RefinerChunkRunner::RefineBlock";
  CheckBlock(kWhere, z_block);
  if (!eps.defined() || eps.sizes() != z_block.sizes()) {
    BadInput(kWhere, "eps has shape " + ShapeOf(eps) + ", expected z_block's " + ShapeOf(z_block));
  }
  CheckFinite(kWhere, "eps", eps);
  return RefineBlockImpl(z_block, eps, on_step, tap);
}

at::Tensor RefinerChunkRunner::RefineBlockImpl(const at::Tensor& z_block, const at::Tensor& eps,
                                               const RefinerStepCallback& on_step,
                                               const RefinerTap& tap) {
  const Ltx2Transformer& model = *model_;
  const int64_t n_frames = z_block.size(2);
  at::NoGradGuard no_grad;
  const c10::ScalarType dtype = model.dtype();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(model.device());
  const int64_t sink = options_.sink_size, per_frame = tokens_per_frame_;
  const int64_t n_sink = sink * per_frame, n_block = n_frames * per_frame;
  const int64_t block_start = next_block_start();
  const std::vector<float>& sigmas = options_.sigmas;
  const int steps = options_.steps();

  // 1. Prefix: the sink K re-RoPE'd at block_start - history_frames - sink_size, so it sits just
  //    before the history window (`rf_shifted_sink`); the history K are post-RoPE already.
  const Ltx2RopeTable sink_rope =
      model.Rope(FrameRange(next_sink_rope_offset(), sink), height_, width_, options_.fps);
  for (size_t l = 0; l < workspace_.size(); ++l) {
    workspace_[l].k.narrow(1, 0, n_sink).copy_(ApplySplitRope(sink_kv_[l].k, sink_rope));
  }
  Ltx2ForwardOptions forward;
  forward.pattern = AttentionPattern::kPrefix;
  forward.kv_workspace = &workspace_;
  forward.prefix_tokens = n_sink + history_frames_ * per_frame;

  // 2. Noise: x = (1 - sigma_0) z + sigma_0 eps in float32, kept in the model dtype.
  at::Tensor x = Renoise(z_block.to(model.device()), eps.to(model.device()), sigmas[0]).to(dtype);

  // 3. Euler steps over the block tokens at their absolute frames.
  const Ltx2RopeTable block_rope =
      model.Rope(FrameRange(block_start, n_frames), height_, width_, options_.fps);
  for (int k = 0; k < steps; ++k) {
    Step(on_step, k);
    if (tap) tap("step" + std::to_string(k) + ".x_t", x);
    const float sigma = sigmas[static_cast<size_t>(k)];
    const float sigma_next = sigmas[static_cast<size_t>(k) + 1];
    const at::Tensor tokens = PackLatentTokens(x);
    const Ltx2Timesteps timesteps = Ltx2Timesteps::Uniform(
        at::full({batch_}, static_cast<double>(ModelTimestep(model, sigma)), f32), n_block);
    const at::Tensor velocity = model.Forward(tokens, timesteps, block_rope, text_, forward).velocity;
    const at::Tensor x0 = UnpackLatentTokens(X0FromVelocity(tokens, velocity, sigma).to(dtype),
                                             n_frames, height_, width_);
    if (tap) tap("step" + std::to_string(k) + ".x0", x0);
    x = EulerStepRatioForm(x, x0, sigma, sigma_next).to(dtype);
  }

  const int64_t cap = options_.history_cap_frames();
  if (cap > 0) {
    // 4. Capture: the refined block at sigma = 0 under the same prefix; its post-RoPE K/V land in
    //    the workspace rows right after the history.
    Step(on_step, steps);
    Ltx2ForwardOptions capture = forward;
    capture.capture = KvCapture::kPostRope;
    capture.skip_output = true;
    const Ltx2ForwardResult captured =
        model.Forward(PackLatentTokens(x), Ltx2Timesteps::Uniform(at::zeros({batch_}, f32), n_block),
                      block_rope, text_, capture);
    if (tap) {
      for (size_t l = 0; l < captured.captured.size(); ++l) {
        const std::string p = "capture.layer" + std::to_string(l) + ".";
        tap(p + "k_post_rope", captured.captured[l].k);
        tap(p + "v", captured.captured[l].v);
      }
    }
    // 5. History <- the last min(history + n, cap) frames of [history, capture] (spec invariant
    //    21); the dropped frames are the oldest, so the kept ones move forward to follow the sink.
    const int64_t total = history_frames_ + n_frames;
    const int64_t keep = std::min<int64_t>(total, cap);
    const int64_t drop = total - keep;
    if (drop > 0) {
      for (Ltx2LayerKv& ws : workspace_) {
        for (at::Tensor* t : {&ws.k, &ws.v}) {
          // Source and destination overlap: go through a copy (one layer at a time).
          const at::Tensor kept = t->narrow(1, n_sink + drop * per_frame, keep * per_frame).clone();
          t->narrow(1, n_sink, keep * per_frame).copy_(kept);
        }
      }
    }
    history_frames_ = keep;
  }
  // With no history cap (kv_max_frames == sink_size) the reference skips the capture and every
  // block sees the sink alone.

  frames_refined_ += n_frames;
  ++blocks_done_;
  if (n_frames < options_.block_size) short_block_done_ = true;
  return x;
}

int64_t RefinerChunkRunner::HistoryBytes() const {
  const int64_t element = static_cast<int64_t>(c10::elementSize(model_->dtype()));
  return history_frames_ * tokens_per_frame_ * batch_ * model_->config().inner_dim() * 2 *
         model_->config().num_layers * element;
}

int64_t RefinerChunkRunner::StateBytes() const {
  int64_t total = 0;
  for (const auto* list : {&workspace_, &sink_kv_}) {
    for (const Ltx2LayerKv& kv : *list) {
      total += (kv.k.numel() + kv.v.numel()) * static_cast<int64_t>(kv.k.element_size());
    }
  }
  return total;
}

std::vector<Ltx2LayerKv> RefinerChunkRunner::History() const {
  std::vector<Ltx2LayerKv> out;
  const int64_t start = options_.sink_size * tokens_per_frame_;
  const int64_t rows = history_frames_ * tokens_per_frame_;
  for (const Ltx2LayerKv& ws : workspace_) {
    out.push_back({ws.k.narrow(1, start, rows), ws.v.narrow(1, start, rows)});
  }
  return out;
}

}  // namespace wmserve::worker::ltx2
