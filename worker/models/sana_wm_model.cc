// The `sana-wm` model: SANA-WM Stage-1 rollouts (worker/models/sana/rollout.h) behind the Model
// interface, with the stand-in image encoder and latent preview decoder described in the header.
//
// Every call into the port runs inside CatchSana, which turns the port's exceptions into
// statuses (errors.h): InvalidInputError / ConfigError -> INVALID_ARGUMENT, RolloutCancelled ->
// CANCELLED, out of memory -> RESOURCE_EXHAUSTED, anything else -> INTERNAL.
#include "worker/models/sana_wm_model.h"

#include "worker/models/torch_device.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/adaptive_avg_pool2d.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_pinv.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/models/sana/batcher.h"
#include "worker/models/sana/camera.h"
#include "worker/models/sana/dummy_weights.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/rollout.h"
#include "worker/models/sana/safetensors.h"
#include "worker/models/sana/sampler.h"
#include "worker/models/sana/sana_config.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker {
namespace {

using sana::RolloutMode;
using sana::SanaConfig;
using sana::SanaTransformer;

constexpr char kModelName[] = "sana-wm";
constexpr char kAllowedOptions[] = "cfg, mode, prompt, steps";
constexpr char kDefaultPrompt[] = "default";
constexpr char kUncondPrompt[] = "uncond";
constexpr char kMaskSuffix[] = ".mask";
// Fixed seeds of the stand-ins: the same on every worker, so outputs do not depend on placement.
constexpr uint64_t kPreviewSeed = 0x5A4A'0001;
constexpr uint64_t kDefaultPromptSeed = 0x5A4A'0002;
constexpr int kMaxSteps = 1000;
// Latent frames assumed for a rollout's latent buffers in the per-rollout estimate (60 s).
constexpr int64_t kNominalLatentFrames = 121;

// --- errors ----------------------------------------------------------------------------------

bool LooksLikeOutOfMemory(const std::string& what) {
  return absl::StrContains(what, "out of memory") || absl::StrContains(what, "can't allocate") ||
         absl::StrContains(what, "CUDA error: out of memory");
}

// Runs `fn`, mapping every exception of the port and of LibTorch to a status.
template <typename Fn>
auto CatchSana(const char* what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const sana::InvalidInputError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const sana::ConfigError& e) {
    return absl::InvalidArgumentError(absl::StrCat("sana-wm config: ", e.what()));
  } catch (const sana::RolloutCancelled&) {
    return absl::CancelledError("rollout cancelled");
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("sana-wm ", what, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (LooksLikeOutOfMemory(message)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("sana-wm ", what, ": out of memory: ", message));
    }
    return absl::InternalError(absl::StrCat("sana-wm ", what, ": ", message));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("sana-wm ", what, ": out of host memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sana-wm ", what, ": ", e.what()));
  }
}

// --- config ----------------------------------------------------------------------------------


absl::StatusOr<c10::ScalarType> ParseDtype(const std::string& dtype) {
  if (dtype == "fp32" || dtype == "float32") return c10::ScalarType::Float;
  if (dtype == "bf16" || dtype == "bfloat16") return c10::ScalarType::BFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", dtype, "\": sana-wm takes fp32 or bf16"));
}

absl::StatusOr<RolloutMode> ParseMode(const std::string& mode, const std::string& field) {
  if (mode == "streaming") return RolloutMode::kStreaming;
  if (mode == "bidirectional") return RolloutMode::kBidirectional;
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": must be \"streaming\" or \"bidirectional\" (got \"", mode, "\")"));
}

absl::StatusOr<SanaConfig> ParsePreset(const std::string& preset) {
  if (preset != "tiny" && preset != "sana-wm-2.6b") {
    return absl::InvalidArgumentError(absl::StrCat(
        "preset \"", preset, "\": sana-wm presets are \"tiny\" and \"sana-wm-2.6b\""));
  }
  return CatchSana("preset", [&]() -> absl::StatusOr<SanaConfig> {
    return SanaConfig::Preset(preset);
  });
}

// Rough device bytes of one streaming rollout (spec §4.3, §8): the streaming cache, the
// activations of one chunk forward, and the rollout's latent buffers.
uint64_t EstimateRolloutBytes(const SanaConfig& cfg, c10::ScalarType dtype) {
  const uint64_t e = c10::elementSize(dtype);
  const uint64_t s = static_cast<uint64_t>(cfg.tokens_per_frame());
  const uint64_t c = static_cast<uint64_t>(cfg.hidden_size);
  const uint64_t heads = static_cast<uint64_t>(cfg.num_heads());
  const uint64_t d = static_cast<uint64_t>(cfg.head_dim());
  const uint64_t softmax_blocks = cfg.SoftmaxBlocks().size();
  const uint64_t gdn_blocks = static_cast<uint64_t>(cfg.depth()) - softmax_blocks;
  const uint64_t chunk = static_cast<uint64_t>(cfg.chunk_size);
  const uint64_t conv_tail = static_cast<uint64_t>(std::max(0, cfg.conv_kernel_size - 1));
  const uint64_t ffn_tail = static_cast<uint64_t>(cfg.t_kernel_size / 2);
  // GDN: main kv + z and camera kv states (fp32), short-conv input tails (main + camera).
  const uint64_t gdn = gdn_blocks * ((2 * heads * d * d + heads * d) * 4 + 2 * conv_tail * s * c * e);
  // Every block: the FFN t_conv tail.
  const uint64_t ffn = static_cast<uint64_t>(cfg.depth()) * ffn_tail * s * c * e;
  // Softmax: cached main + camera K/V of the window outside the current chunk (sink + latest).
  const uint64_t cached_frames =
      static_cast<uint64_t>(sana::kStreamingMaxKeyFrames) - chunk;
  const uint64_t softmax = softmax_blocks * 4 * heads * cached_frames * s * d * e;
  // One forward over the largest chunk: the FFN's expanded features (~5 F per token) and a
  // dozen C-wide temporaries per token.
  const uint64_t chunk_tokens = (chunk + 1) * s;
  const uint64_t activations =
      chunk_tokens * (5 * static_cast<uint64_t>(cfg.ffn_hidden_features()) + 12 * c) * e;
  // Noise / latents (float32) of a nominal 60-s rollout.
  const uint64_t latents = static_cast<uint64_t>(kNominalLatentFrames) * s *
                           static_cast<uint64_t>(cfg.in_channels) * 4 * 2;
  return gdn + ffn + softmax + activations + latents;
}

// --- stand-in encoder / preview decoder ------------------------------------------------------

// The preview projection (3, C): N(0, 1/C) from a fixed seed, drawn on the CPU in float64 so it
// is the same everywhere.
at::Tensor PreviewProjection(int64_t channels) {
  at::Generator gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU)).clone();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(kPreviewSeed);
  }
  at::Tensor p = at::empty({3, channels}, at::TensorOptions().dtype(at::kDouble));
  p.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(channels)), gen);
  return p;
}

// The built-in placeholder prompt: (L, Ccap) N(0, 1) from a fixed seed.
at::Tensor DefaultPromptEmbedding(const SanaConfig& cfg) {
  at::Generator gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU)).clone();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(kDefaultPromptSeed);
  }
  at::Tensor y = at::empty({cfg.model_max_length, cfg.caption_channels}, at::kFloat);
  y.normal_(0.0, 1.0, gen);
  return y;
}

struct PromptEmbedding {
  at::Tensor text;  // (1, 1, L, Ccap) float32 on the model device
  at::Tensor mask;  // (1, L) int64
};

// `embedding` right-padded with masked zero tokens to `length` tokens (CFG batches the
// conditional and unconditional text, so they need one length).
PromptEmbedding PadTo(const PromptEmbedding& embedding, int64_t length) {
  const int64_t have = embedding.text.size(2);
  if (have >= length) return embedding;
  PromptEmbedding padded;
  padded.text = at::constant_pad_nd(embedding.text, {0, 0, 0, length - have}, 0.0);
  padded.mask = at::constant_pad_nd(embedding.mask, {0, length - have}, 0.0);
  return padded;
}

// --- options ---------------------------------------------------------------------------------

struct SanaOptions {
  RolloutMode mode = RolloutMode::kStreaming;
  int steps = sana::kBidirectionalSteps;
  double cfg = sana::kBidirectionalCfgScale;
  std::string prompt = kDefaultPrompt;
};

absl::StatusOr<SanaOptions> ParseOptions(const std::map<std::string, std::string>& options,
                                         RolloutMode default_mode) {
  SanaOptions parsed;
  parsed.mode = default_mode;
  bool has_steps = false, has_cfg = false;
  for (const auto& [key, value] : options) {
    if (key == "mode") {
      absl::StatusOr<RolloutMode> mode = ParseMode(value, "model_options.mode");
      if (!mode.ok()) return mode.status();
      parsed.mode = *mode;
    } else if (key == "steps") {
      int steps = 0;
      if (!absl::SimpleAtoi(value, &steps) || steps < 1 || steps > kMaxSteps) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model_options.steps: must be an integer in [1, ", kMaxSteps, "] (got \"", value,
            "\")"));
      }
      parsed.steps = steps;
      has_steps = true;
    } else if (key == "cfg") {
      double cfg = 0;
      if (!absl::SimpleAtod(value, &cfg) || !std::isfinite(cfg) || cfg <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model_options.cfg: must be a finite number > 0 (got \"", value, "\")"));
      }
      parsed.cfg = cfg;
      has_cfg = true;
    } else if (key == "prompt") {
      if (value.empty()) {
        return absl::InvalidArgumentError("model_options.prompt: must name a prompt embedding");
      }
      parsed.prompt = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("model_options.", key,
                                                     ": unknown option for model \"", kModelName,
                                                     "\" (allowed: ", kAllowedOptions, ")"));
    }
  }
  if (parsed.mode == RolloutMode::kStreaming && (has_steps || has_cfg)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model_options.", has_steps ? "steps" : "cfg",
        ": only for mode=bidirectional (the streaming model is distilled to 4 steps without "
        "CFG)"));
  }
  return parsed;
}

// The server validates requests; these checks keep the model safe for direct callers.
absl::Status ValidateSpec(const RolloutSpec& spec, const ModelDescriptor& descriptor) {
  const bool native_size = (spec.width == 0 && spec.height == 0) ||
                           (spec.width == descriptor.native_width &&
                            spec.height == descriptor.native_height);
  if (!native_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output.width/height: sana-wm generates ", descriptor.native_width, "x",
        descriptor.native_height, " only (got ", spec.width, "x", spec.height,
        "); request ", descriptor.native_width, "x", descriptor.native_height,
        " or 0x0 for the native size"));
  }
  const RgbImage& image = spec.image;
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("image: inconsistent RGB image (", image.width,
                                                   "x", image.height, ", ",
                                                   image.pixels.size(), " bytes)"));
  }
  if (spec.cameras.empty()) return absl::InvalidArgumentError("trajectory.poses: no camera frames");
  return absl::OkStatus();
}

class NullControl final : public RolloutControl {
 public:
  bool cancelled() const override { return false; }
  void OnStep(ModelStage, int, int) override {}
  void AddStageTime(ModelStage, absl::Duration) override {}
};

// What a rollout shares with its model (immutable after load).
struct SanaShared {
  SanaConfig config;
  c10::Device device = c10::Device(c10::kCPU);
  std::unique_ptr<SanaTransformer> transformer;
  at::Tensor preview;         // (3, C) float32 on the device: latent -> RGB in [-1, 1]
  at::Tensor preview_pinv;    // (C, 3) float32 on the device: RGB -> latent
  std::map<std::string, PromptEmbedding> prompts;  // includes "default"
  PromptEmbedding uncond;
  int pixel_width = 0, pixel_height = 0;
  // Runs the streaming rollouts' Stage-1 chunks, co-batched (internally synchronised).
  std::shared_ptr<sana::StreamingBatcher> batcher;
};

// --- rollout ---------------------------------------------------------------------------------

// Pixel frames emitted per chunk after the first: 3 latent frames.
int PixelFramesPerChunk(const SanaConfig& cfg) { return cfg.chunk_size * cfg.vae_temporal_stride; }

class SanaRollout final : public ModelRollout {
 public:
  SanaRollout(std::shared_ptr<const SanaShared> shared, RolloutMode mode, int num_frames,
              sana::RolloutInputs inputs, int steps, double cfg)
      : shared_(std::move(shared)), mode_(mode), num_frames_(num_frames) {
    if (mode_ == RolloutMode::kStreaming) {
      streaming_ = std::make_unique<sana::StreamingRollout>(*shared_->transformer,
                                                            std::move(inputs));
      batch_membership_ = shared_->batcher->Join();
    } else {
      bidirectional_ =
          std::make_unique<sana::BidirectionalRollout>(*shared_->transformer, std::move(inputs),
                                                       steps, cfg);
    }
  }

  absl::StatusOr<std::optional<FrameChunk>> NextChunk(RolloutControl& control) override {
    if (!failure_.ok()) return failure_;
    absl::StatusOr<std::optional<FrameChunk>> chunk =
        CatchSana("next chunk", [&] { return NextChunkOrThrow(control); });
    // A rollout that threw (cancel included) must not be resumed.
    if (!chunk.ok()) failure_ = chunk.status();
    return chunk;
  }

 private:
  absl::StatusOr<std::optional<FrameChunk>> NextChunkOrThrow(RolloutControl& control);
  // Generates latents until `latent_rgb_` covers pixel frames [0, pixel_end).
  void GenerateThrough(int pixel_end, RolloutControl& control);
  // Appends the preview RGB (latent resolution) of latents (1, C, t, H, W).
  void AppendLatents(const at::Tensor& latents);
  // Decodes pixel frames [first, first + count) into `out` (count, H, W, 3) uint8, host.
  absl::Status Decode(int first, int count, const at::Tensor& out, RolloutControl& control) const;

  const std::shared_ptr<const SanaShared> shared_;
  const RolloutMode mode_;
  const int num_frames_;
  std::unique_ptr<sana::StreamingRollout> streaming_;
  // While alive, the batcher expects this rollout back at every chunk boundary.
  std::unique_ptr<sana::StreamingBatcher::Membership> batch_membership_;
  std::unique_ptr<sana::BidirectionalRollout> bidirectional_;
  std::vector<at::Tensor> latent_rgb_;  // per latent frame: (3, H_lat, W_lat) float32, device
  int next_frame_ = 0;                  // next pixel frame to emit
  absl::Status failure_;
};

void SanaRollout::AppendLatents(const at::Tensor& latents) {
  // (1, C, t, H, W) -> (t, H, W, C) @ (C, 3) -> (t, 3, H, W).
  const at::Tensor frames = latents.select(0, 0).to(at::kFloat).permute({1, 2, 3, 0});
  const at::Tensor rgb =
      at::matmul(frames, shared_->preview.t()).permute({0, 3, 1, 2}).contiguous();
  for (int64_t i = 0; i < rgb.size(0); ++i) latent_rgb_.push_back(rgb.select(0, i));
}

void SanaRollout::GenerateThrough(int pixel_end, RolloutControl& control) {
  const int stride = shared_->config.vae_temporal_stride;
  // Pixel frame p needs latent frame ceil(p / stride).
  const size_t latents_needed = static_cast<size_t>((pixel_end - 1 + stride - 1) / stride + 1);
  if (latent_rgb_.size() >= latents_needed) return;
  StageTimer timer(control, ModelStage::kBackbone);
  const sana::StepCallback on_step = [&control](int step, int total_steps) {
    control.OnStep(ModelStage::kBackbone, step, total_steps);
    return !control.cancelled();
  };
  if (mode_ == RolloutMode::kBidirectional) {
    AppendLatents(bidirectional_->Run(on_step));
    return;
  }
  const std::function<bool()> cancelled = [&control] { return control.cancelled(); };
  while (latent_rgb_.size() < latents_needed) {
    AppendLatents(shared_->batcher->NextChunk(*streaming_, on_step, cancelled));
  }
  // The last chunk is done: stop holding batch-mates back at chunk boundaries.
  if (streaming_->done()) batch_membership_.reset();
}

absl::Status SanaRollout::Decode(int first, int count, const at::Tensor& out,
                                 RolloutControl& control) const {
  StageTimer timer(control, ModelStage::kDecode);
  const int stride = shared_->config.vae_temporal_stride;
  // Batches of up to one latent frame's worth of pixel frames bound the float temporaries.
  for (int done = 0; done < count;) {
    if (control.cancelled()) return absl::CancelledError("rollout cancelled");
    const int batch = std::min(stride, count - done);
    std::vector<at::Tensor> frames;
    frames.reserve(batch);
    for (int i = 0; i < batch; ++i) {
      const int p = first + done + i;
      if (p == 0) {
        frames.push_back(latent_rgb_[0]);
        continue;
      }
      // Causal layout: latent k covers pixel frames stride*(k-1)+1 .. stride*k.
      const int k = (p + stride - 1) / stride;
      const double w = static_cast<double>(p - stride * (k - 1)) / stride;
      frames.push_back(latent_rgb_[k - 1].mul(1.0 - w).add(latent_rgb_[k], w));
    }
    const at::Tensor small = at::stack(frames);  // (b, 3, H_lat, W_lat)
    const at::Tensor full =
        at::upsample_bilinear2d(small, {shared_->pixel_height, shared_->pixel_width},
                                /*align_corners=*/false);
    // [-1, 1] -> [0, 255], rounded; NCHW -> NHWC.
    const at::Tensor bytes =
        full.clamp(-1.0, 1.0).mul(127.5).add(127.5).round().to(at::kByte).permute({0, 2, 3, 1});
    out.narrow(0, done, batch).copy_(bytes);
    control.OnStep(ModelStage::kDecode, first + done + batch - 1, num_frames_);
    done += batch;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<FrameChunk>> SanaRollout::NextChunkOrThrow(RolloutControl& control) {
  if (next_frame_ >= num_frames_) return std::nullopt;
  if (control.cancelled()) return absl::CancelledError("rollout cancelled");
  c10::InferenceMode inference;
  const int per_chunk = PixelFramesPerChunk(shared_->config);
  const int count = std::min(next_frame_ == 0 ? per_chunk + 1 : per_chunk,
                             num_frames_ - next_frame_);
  GenerateThrough(next_frame_ + count, control);
  FrameChunk chunk;
  chunk.first_frame = next_frame_;
  chunk.frame_count = count;
  chunk.width = shared_->pixel_width;
  chunk.height = shared_->pixel_height;
  chunk.rgb.resize(static_cast<size_t>(count) * chunk.height * chunk.width * 3);
  const at::Tensor out =
      at::from_blob(chunk.rgb.data(), {count, chunk.height, chunk.width, 3}, at::kByte);
  if (absl::Status s = Decode(next_frame_, count, out, control); !s.ok()) return s;
  next_frame_ += count;
  return chunk;
}

// --- model -----------------------------------------------------------------------------------

class SanaWmModel final : public Model {
 public:
  SanaWmModel(std::shared_ptr<const SanaShared> shared, ModelDescriptor descriptor,
              RolloutMode default_mode)
      : shared_(std::move(shared)),
        descriptor_(std::move(descriptor)),
        default_mode_(default_mode) {}

  const ModelDescriptor& descriptor() const override { return descriptor_; }

  absl::Status WarmUp() override {
    return CatchSana("warm-up", [&]() -> absl::Status { return WarmUpOrThrow(); });
  }

  absl::StatusOr<std::unique_ptr<ModelRollout>> StartRollout(const RolloutSpec& spec,
                                                             RolloutControl& control) override;

 private:
  absl::Status WarmUpOrThrow() const;
  std::unique_ptr<ModelRollout> Encode(const RolloutSpec& spec, const SanaOptions& options,
                                       const PromptEmbedding& prompt) const;

  const std::shared_ptr<const SanaShared> shared_;
  const ModelDescriptor descriptor_;
  const RolloutMode default_mode_;
};

absl::StatusOr<std::unique_ptr<ModelRollout>> SanaWmModel::StartRollout(
    const RolloutSpec& spec, RolloutControl& control) {
  if (control.cancelled()) return absl::CancelledError("rollout cancelled");
  absl::StatusOr<SanaOptions> options = ParseOptions(spec.options, default_mode_);
  if (!options.ok()) return options.status();
  if (absl::Status valid = ValidateSpec(spec, descriptor_); !valid.ok()) return valid;
  if (absl::Status frames = CatchSana("frame count", [&]() -> absl::Status {
        sana::CheckNumFrames(shared_->config, static_cast<int>(spec.cameras.size()),
                             options->mode);
        return absl::OkStatus();
      });
      !frames.ok()) {
    return frames;
  }
  const auto prompt = shared_->prompts.find(options->prompt);
  if (prompt == shared_->prompts.end()) {
    std::vector<std::string> names;
    for (const auto& [name, unused] : shared_->prompts) names.push_back(name);
    return absl::InvalidArgumentError(absl::StrCat("model_options.prompt: no prompt embedding \"",
                                                   options->prompt, "\" (available: ",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  StageTimer timer(control, ModelStage::kImageEncode);
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout =
      CatchSana("image encode", [&]() -> absl::StatusOr<std::unique_ptr<ModelRollout>> {
        return Encode(spec, *options, prompt->second);
      });
  if (rollout.ok()) control.OnStep(ModelStage::kImageEncode, 0, 1);
  return rollout;
}

std::unique_ptr<ModelRollout> SanaWmModel::Encode(const RolloutSpec& spec,
                                                  const SanaOptions& options,
                                                  const PromptEmbedding& prompt) const {
  c10::InferenceMode inference;
  const SanaShared& s = *shared_;
  const SanaConfig& cfg = s.config;
  const int frames = static_cast<int>(spec.cameras.size());
  const sana::ResizeCropPlan plan = sana::PlanResizeCenterCrop(
      spec.image.width, spec.image.height, s.pixel_width, s.pixel_height);

  // Cameras: intrinsics remapped for the resize + crop, then camera.h's preprocessing.
  std::vector<sana::CameraPose> poses;
  std::vector<sana::Intrinsics> intrinsics;
  poses.reserve(frames);
  intrinsics.reserve(frames);
  for (const CameraFrame& camera : spec.cameras) {
    poses.push_back(camera.c2w);
    intrinsics.push_back(sana::TransformIntrinsicsForCrop(
        sana::Intrinsics{camera.fx, camera.fy, camera.cx, camera.cy}, plan));
  }
  const sana::CameraTensors camera =
      sana::PrepareCamera(poses, intrinsics, sana::CameraGeometry::FromConfig(cfg));

  // Stand-in image encoder: resize + centre crop, average-pool to the latent grid, RGB -> C.
  const at::Tensor image =
      at::from_blob(const_cast<uint8_t*>(spec.image.pixels.data()),
                    {spec.image.height, spec.image.width, 3}, at::kByte)
          .to(s.device)
          .permute({2, 0, 1})
          .unsqueeze(0)
          .to(at::kFloat)
          .div(127.5)
          .sub(1.0);
  const at::Tensor resized =
      at::upsample_bilinear2d(image, {plan.resized_height, plan.resized_width},
                              /*align_corners=*/false);
  const at::Tensor cropped = resized.narrow(2, plan.crop_top, s.pixel_height)
                                 .narrow(3, plan.crop_left, s.pixel_width);
  const at::Tensor pooled =
      at::adaptive_avg_pool2d(cropped, {cfg.latent_height(), cfg.latent_width()});  // (1,3,h,w)
  const at::Tensor latent =
      at::matmul(pooled.select(0, 0).permute({1, 2, 0}), s.preview_pinv.t())  // (h, w, C)
          .permute({2, 0, 1})
          .unsqueeze(0)
          .unsqueeze(2)
          .contiguous();  // (1, C, 1, h, w)

  sana::RolloutInputs inputs;
  inputs.first_latent = latent;
  inputs.camera_conditions = camera.camera_conditions.unsqueeze(0).to(s.device);
  inputs.chunk_plucker = camera.chunk_plucker.unsqueeze(0).to(s.device);
  const int64_t length = std::max(prompt.text.size(2), s.uncond.text.size(2));
  const PromptEmbedding text = PadTo(prompt, length);
  const PromptEmbedding uncond = PadTo(s.uncond, length);
  inputs.text = text.text;
  inputs.text_mask = text.mask;
  inputs.uncond_text = uncond.text;
  inputs.uncond_mask = uncond.mask;
  inputs.seed = spec.seed;
  return std::make_unique<SanaRollout>(shared_, options.mode, frames, std::move(inputs),
                                       options.steps, options.cfg);
}

absl::Status SanaWmModel::WarmUpOrThrow() const {
  c10::InferenceMode inference;
  const SanaShared& s = *shared_;
  const SanaConfig& cfg = s.config;
  // One denoiser forward over one latent frame of at most 2x2 tokens, camera branch included.
  const int64_t h = std::min(2, cfg.latent_height()), w = std::min(2, cfg.latent_width());
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(s.device);
  const at::Tensor x = at::zeros({1, cfg.in_channels, 1, h, w}, f32);
  const at::Tensor t = at::zeros({1, 1, 1}, f32);
  at::Tensor camera = at::zeros({1, 1, 20}, f32);
  for (int i = 0; i < 4; ++i) camera.select(2, i * 5).fill_(1.0);  // identity c2w
  camera.narrow(2, 16, 2).fill_(1.0);                              // fx, fy
  camera.narrow(2, 18, 1).fill_(static_cast<double>(w) / 2);       // cx
  camera.narrow(2, 19, 1).fill_(static_cast<double>(h) / 2);       // cy
  const at::Tensor plucker = at::zeros({1, cfg.chunk_plucker_channels, 1, h, w}, f32);
  const PromptEmbedding& prompt = s.prompts.at(kDefaultPrompt);
  const at::Tensor v = s.transformer->Forward(x, t, prompt.text, prompt.mask, camera, plucker);
  if (!at::isfinite(v).all().item<bool>()) {
    return absl::InternalError("sana-wm warm-up: the forward produced non-finite values");
  }
  return absl::OkStatus();
}

// Reads prompt embeddings (see SanaWmConfig::prompt_embeddings) into `prompts` / `uncond`.
void LoadPromptEmbeddings(const std::string& path, const SanaConfig& cfg, c10::Device device,
                          std::map<std::string, PromptEmbedding>& prompts,
                          PromptEmbedding& uncond) {
  const sana::SafetensorsFile file = sana::SafetensorsFile::Open(path);
  for (const std::string& name : file.names()) {
    if (absl::EndsWith(name, kMaskSuffix)) {
      const std::string base = name.substr(0, name.size() - (sizeof(kMaskSuffix) - 1));
      if (!file.Contains(base)) {
        throw sana::ConfigError(path + ": mask \"" + name + "\" has no embedding \"" + base +
                                "\"");
      }
      continue;
    }
    at::Tensor text = file.Load(name, at::kFloat);
    if (text.dim() == 3 && text.size(0) == 1) text = text.select(0, 0);
    if (text.dim() != 2 || text.size(0) < 1 || text.size(1) != cfg.caption_channels) {
      throw sana::ConfigError(path + ": prompt embedding \"" + name + "\" has shape " +
                              sana::ShapeString(text.sizes().vec()) + ", expected [L, " +
                              std::to_string(cfg.caption_channels) + "]");
    }
    const int64_t length = text.size(0);
    at::Tensor mask = at::ones({length}, at::kLong);
    if (file.Contains(name + kMaskSuffix)) {
      mask = file.Load(name + kMaskSuffix).to(at::kLong).flatten();
      if (mask.numel() != length) {
        throw sana::ConfigError(path + ": mask \"" + name + kMaskSuffix + "\" has " +
                                std::to_string(mask.numel()) + " values, expected " +
                                std::to_string(length));
      }
    }
    PromptEmbedding embedding{text.view({1, 1, length, cfg.caption_channels}).to(device),
                              mask.view({1, length}).to(device)};
    if (name == kUncondPrompt) {
      uncond = std::move(embedding);
    } else {
      prompts[name] = std::move(embedding);
    }
  }
}

absl::StatusOr<std::unique_ptr<Model>> CreateOrThrow(const SanaWmConfig& config,
                                                     ModelDescriptor descriptor) {
  absl::StatusOr<c10::Device> device = ParseTorchDevice(config.device, /*check_present=*/true);
  if (!device.ok()) return device.status();
  absl::StatusOr<c10::ScalarType> dtype = ParseDtype(config.dtype);
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<RolloutMode> mode = ParseMode(config.mode, "mode");
  if (!mode.ok()) return mode.status();
  absl::StatusOr<SanaConfig> cfg = ParsePreset(config.preset);
  if (!cfg.ok()) return cfg.status();

  c10::InferenceMode inference;
  auto shared = std::make_shared<SanaShared>();
  shared->config = *cfg;
  shared->device = *device;
  shared->pixel_width = cfg->pixel_width;
  shared->pixel_height = cfg->pixel_height;
  if (config.weights == "dummy") {
    shared->transformer = sana::InitDummyWeights(*cfg, config.dummy_seed, *dtype, *device);
  } else {
    shared->transformer = std::make_unique<SanaTransformer>(*cfg);
    try {
      shared->transformer->LoadWeights(sana::SafetensorsFile::Open(config.weights), *dtype,
                                       *device);
    } catch (const sana::SafetensorsError& e) {
      return absl::InvalidArgumentError(absl::StrCat("weights: ", e.what()));
    }
  }
  sana::StreamingBatcher::Options batching;
  batching.max_batch = config.max_batch;
  batching.gather_fraction = config.batch_gather_fraction;
  batching.max_gather = std::chrono::milliseconds(config.batch_gather_max_ms);
  batching.on_batch = config.on_batch;
  shared->batcher = std::make_shared<sana::StreamingBatcher>(std::move(batching));
  const at::Tensor preview = PreviewProjection(cfg->in_channels);
  shared->preview = preview.to(at::kFloat).to(*device);
  shared->preview_pinv = at::linalg_pinv(preview).to(at::kFloat).to(*device);

  const int64_t length = cfg->model_max_length;
  shared->prompts[kDefaultPrompt] = {
      DefaultPromptEmbedding(*cfg).view({1, 1, length, cfg->caption_channels}).to(*device),
      at::ones({1, length}, at::TensorOptions().dtype(at::kLong).device(*device))};
  shared->uncond = {
      at::zeros({1, 1, length, cfg->caption_channels},
                at::TensorOptions().dtype(at::kFloat).device(*device)),
      at::ones({1, length}, at::TensorOptions().dtype(at::kLong).device(*device))};
  if (!config.prompt_embeddings.empty()) {
    try {
      LoadPromptEmbeddings(config.prompt_embeddings, *cfg, *device, shared->prompts,
                           shared->uncond);
    } catch (const sana::SafetensorsError& e) {
      return absl::InvalidArgumentError(absl::StrCat("prompt embeddings: ", e.what()));
    }
  }
  return std::make_unique<SanaWmModel>(std::move(shared), std::move(descriptor), *mode);
}

}  // namespace

absl::StatusOr<ModelDescriptor> DescribeSanaWm(const SanaWmConfig& config) {
  absl::StatusOr<c10::Device> device = ParseTorchDevice(config.device, /*check_present=*/false);
  if (!device.ok()) return device.status();
  absl::StatusOr<c10::ScalarType> dtype = ParseDtype(config.dtype);
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<RolloutMode> mode = ParseMode(config.mode, "mode");
  if (!mode.ok()) return mode.status();
  if (config.weights.empty()) {
    return absl::InvalidArgumentError("weights: \"dummy\" or a safetensors path");
  }
  absl::StatusOr<SanaConfig> cfg = ParsePreset(config.preset);
  if (!cfg.ok()) return cfg.status();
  if (config.max_batch < 1 || config.batch_gather_max_ms < 0 ||
      !(config.batch_gather_fraction >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch must be >= 1, batch_gather_fraction and batch_gather_max_ms >= 0 (got ",
        config.max_batch, ", ", config.batch_gather_fraction, ", ", config.batch_gather_max_ms,
        ")"));
  }
  ModelDescriptor descriptor;
  descriptor.name = kModelName;
  descriptor.preset = config.preset;
  descriptor.native_width = cfg->pixel_width;
  descriptor.native_height = cfg->pixel_height;
  descriptor.weights_bytes = sana::WeightBytes(*cfg, *dtype);
  descriptor.rollout_state_bytes = EstimateRolloutBytes(*cfg, *dtype);
  // Co-batching applies to streaming rollouts; bidirectional ones always run alone.
  descriptor.max_batch = *mode == RolloutMode::kStreaming ? config.max_batch : 1;
  return descriptor;
}

absl::StatusOr<std::unique_ptr<Model>> CreateSanaWmModel(const SanaWmConfig& config) {
  absl::StatusOr<ModelDescriptor> descriptor = DescribeSanaWm(config);
  if (!descriptor.ok()) return descriptor.status();
  return CatchSana("load", [&]() -> absl::StatusOr<std::unique_ptr<Model>> {
    return CreateOrThrow(config, *std::move(descriptor));
  });
}

}  // namespace wmserve::worker
