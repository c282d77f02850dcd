// The `sana-wm` model: the SANA-WM pipeline behind the Model interface — LTX-2 VAE encode of the
// first image, Stage-1 rollouts (worker/models/sana/rollout.h, co-batched by StreamingBatcher),
// the LTX-2 refiner and the causal VAE decode (worker/models/pipeline/streaming_pipeline.h).
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
#include <atomic>
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
#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/refiner.h"
#include "worker/models/ltx2/vae.h"
#include "worker/models/pipeline/streaming_pipeline.h"
#include "worker/models/sana/batcher.h"
#include "worker/models/sana/camera.h"
#include "worker/models/sana/dummy_weights.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/ops.h"
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
constexpr char kAllowedOptions[] = "cfg, mode, preview, prompt, refine, steps";
constexpr char kDefaultPrompt[] = "default";
constexpr char kUncondPrompt[] = "uncond";
constexpr char kMaskSuffix[] = ".mask";
// Fixed seeds of the placeholder prompts: the same on every worker, so outputs do not depend on
// placement.
constexpr uint64_t kDefaultPromptSeed = 0x5A4A'0002;
constexpr uint64_t kDefaultRefinerPromptSeed = 0x5A4A'0003;
// The placeholder refiner prompt's length: a full prompt at true scale (the refiner's text
// budget, sana-wm-spec §5.1), 16 tokens for the tiny preset.
constexpr int64_t kRefinerPromptTokensFull = 1024;
constexpr int64_t kRefinerPromptTokensTiny = 16;
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

// The LTX-2 components at the Stage-1 preset's scale: "tiny" -> the tiny VAE and refiner (the
// golden configs), "sana-wm-2.6b" -> LTX-2.0 (ltx2-spec §1.1, §2.1). No refiner with
// refiner_weights "none".
struct Ltx2Configs {
  ltx2::VaeConfig vae;
  std::optional<ltx2::TransformerConfig> refiner;
};

absl::StatusOr<Ltx2Configs> Ltx2ConfigsFor(const SanaWmConfig& config) {
  absl::StatusOr<SanaConfig> cfg = ParsePreset(config.preset);
  if (!cfg.ok()) return cfg.status();
  const std::string preset = cfg->name == "tiny" ? "tiny" : "ltx2";
  return CatchSana("ltx2 presets", [&]() -> absl::StatusOr<Ltx2Configs> {
    Ltx2Configs out{ltx2::VaeConfig::Preset(preset), std::nullopt};
    if (out.vae.latent_channels != cfg->in_channels ||
        out.vae.spatial_compression_ratio != cfg->vae_spatial_stride) {
      return absl::InternalError(absl::StrCat(
          "preset ", config.preset, ": the VAE (", out.vae.latent_channels, " channels, x",
          out.vae.spatial_compression_ratio, ") does not match Stage-1 (", cfg->in_channels,
          " channels, x", cfg->vae_spatial_stride, ")"));
    }
    if (config.refiner_weights != "none") out.refiner = ltx2::TransformerConfig::Preset(preset);
    return out;
  });
}

// Rough device bytes of one streaming rollout (spec §4.3, §8; ltx2-spec §1.8, §2.10): the
// Stage-1 streaming cache and one chunk forward's activations, the refiner's K/V workspace and
// one block forward's activations, and two causal VAE decoder caches (FINAL and PREVIEW) plus one
// decode pass's activations. The worst case (refine and preview on) is what placement reserves.
uint64_t EstimateRolloutBytes(const SanaConfig& cfg, const ltx2::VaeConfig& vae_cfg,
                              const ltx2::TransformerConfig* refiner_cfg, c10::ScalarType dtype) {
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
  // Causal VAE decoders: the per-layer frame cache (x2: FINAL and PREVIEW), and the transient
  // activations of decoding one chunk, about 16 chunk-sized RGB videos (measured on an H100 at
  // 704x1280 in bf16: 2.05 GB for a 24-frame chunk; docs/BENCHMARKS.md).
  const uint64_t decoder_cache = 2 * static_cast<uint64_t>(ltx2::VideoVae::StreamingCacheElements(
                                         vae_cfg, 1, cfg.latent_height(), cfg.latent_width())) * e;
  const uint64_t chunk_pixel_frames = chunk * static_cast<uint64_t>(cfg.vae_temporal_stride);
  const uint64_t decode_pass = 16 * chunk_pixel_frames * 3 *
                               static_cast<uint64_t>(cfg.pixel_height) * cfg.pixel_width * e;
  uint64_t refiner = 0;
  if (refiner_cfg != nullptr) {
    // RefinerChunkRunner: per layer K and V over [sink | history | block] frames.
    const ltx2::RefinerOptions options;
    const uint64_t frames = static_cast<uint64_t>(options.kv_max_frames + options.block_size);
    const uint64_t width = static_cast<uint64_t>(refiner_cfg->inner_dim());
    refiner = static_cast<uint64_t>(refiner_cfg->num_layers) * 2 * frames * s * width * e;
    // One block forward: 3 frames of tokens through the 4x FFN and a dozen D-wide temporaries.
    refiner += static_cast<uint64_t>(options.block_size) * s * (4 * width + 12 * width) * e;
  }
  const uint64_t total =
      gdn + ffn + softmax + activations + latents + decoder_cache + decode_pass + refiner;
  // 10 % headroom for allocator rounding and fragmentation: placement must never under-reserve
  // (measured at true scale without preview: 14.3 GB per rollout at peak vs 14.9 GB here before
  // the headroom).
  return total + total / 10;
}

// --- prompts ------------------------------------------------------------------------------

// A built-in placeholder prompt: (length, channels) N(0, 1) from a fixed seed, drawn on the CPU
// so it is the same on every worker.
at::Tensor PlaceholderPrompt(int64_t length, int64_t channels, uint64_t seed) {
  at::Tensor y = at::empty({length, channels}, at::kFloat);
  y.normal_(0.0, 1.0, sana::SeededGenerator(c10::Device(c10::kCPU), seed));
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
  std::optional<bool> refine;  // unset: on when the worker has a refiner
  bool preview = false;
};

// "on"/"true"/"1" or "off"/"false"/"0".
std::optional<bool> ParseSwitch(const std::string& value) {
  if (value == "on" || value == "true" || value == "1") return true;
  if (value == "off" || value == "false" || value == "0") return false;
  return std::nullopt;
}

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
    } else if (key == "refine" || key == "preview") {
      const std::optional<bool> on = ParseSwitch(value);
      if (!on) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model_options.", key, ": must be on or off (got \"", value, "\")"));
      }
      if (key == "refine") {
        parsed.refine = *on;
      } else {
        parsed.preview = *on;
      }
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

// What a rollout shares with its model (immutable after load, except the internally
// synchronised batcher).
struct SanaShared {
  SanaConfig config;
  c10::Device device = c10::Device(c10::kCPU);
  std::unique_ptr<SanaTransformer> transformer;
  std::map<std::string, PromptEmbedding> prompts;  // includes "default"
  PromptEmbedding uncond;
  int pixel_width = 0, pixel_height = 0;
  // Runs the streaming rollouts' Stage-1 chunks, co-batched (internally synchronised).
  std::shared_ptr<sana::StreamingBatcher> batcher;
  // LTX-2 VAE (image encode, causal decode) and refiner (null when the worker runs without it),
  // loaded once and shared read-only by every rollout.
  std::shared_ptr<const ltx2::VideoVae> vae;
  std::shared_ptr<const ltx2::Ltx2Transformer> refiner;
  ltx2::RefinerOptions refiner_options;
  // Refiner prompt contexts by name (caption projection and per-layer text K/V computed once per
  // prompt at load; includes "default").
  std::map<std::string, ltx2::Ltx2TextContext> refiner_prompts;
};

// --- rollout ---------------------------------------------------------------------------------

// Stage-1 latent frames of a rollout of `pixel_frames` frames (8k + 1 -> k + 1).
int64_t LatentFrames(const SanaConfig& cfg, int pixel_frames) {
  return (pixel_frames - 1) / cfg.vae_temporal_stride + 1;
}

class SanaRollout final : public ModelRollout {
 public:
  // `control` outlives the rollout (the runner owns both); the pipeline's threads report to it.
  SanaRollout(std::shared_ptr<const SanaShared> shared, RolloutMode mode, int num_frames,
              sana::RolloutInputs inputs, int steps, double cfg, bool refine, bool preview,
              const ltx2::Ltx2TextContext* refiner_text, RolloutControl& control)
      : shared_(std::move(shared)),
        control_(control),
        latent_frames_(LatentFrames(shared_->config, num_frames)),
        refine_(refine),
        preview_(preview),
        refiner_text_(refiner_text) {
    if (mode == RolloutMode::kStreaming) {
      streaming_ = std::make_unique<sana::StreamingRollout>(*shared_->transformer,
                                                            std::move(inputs));
      batch_membership_ = shared_->batcher->Join();
    } else {
      bidirectional_ = std::make_unique<sana::BidirectionalRollout>(
          *shared_->transformer, std::move(inputs), steps, cfg);
    }
    pipeline::PipelineModels models;
    models.vae = shared_->vae;
    if (refine_) {
      models.refiner = shared_->refiner;
      models.refiner_text = *refiner_text;
      models.refiner_options = shared_->refiner_options;
    }
    pipeline::PipelineOptions options;
    options.refine = refine_;
    options.preview = preview_;
    pipeline::PipelineCallbacks callbacks;
    callbacks.on_refiner_step = [this](int step, int total) {
      control_.OnStep(ModelStage::kRefiner, step, total);
      return !Stopping();
    };
    callbacks.on_stage_time = [this](pipeline::Stage stage, double seconds) {
      control_.AddStageTime(stage == pipeline::Stage::kRefiner ? ModelStage::kRefiner
                                                               : ModelStage::kDecode,
                            absl::Seconds(seconds));
    };
    pipeline_ = std::make_unique<pipeline::StreamingPipeline>(
        std::move(models), [this] { return NextLatents(); }, options, std::move(callbacks));
  }

  ~SanaRollout() override {
    // Stop the pipeline's threads before the state their source reads goes away; the step
    // callbacks see `stopping_`, so a stage in flight ends at its next step.
    stopping_ = true;
    pipeline_.reset();
  }

  absl::StatusOr<std::optional<FrameChunk>> NextChunk(RolloutControl& control) override {
    if (!failure_.ok()) return failure_;
    if (control.cancelled()) return absl::CancelledError("rollout cancelled");
    absl::StatusOr<std::optional<FrameChunk>> chunk =
        CatchSana("next chunk", [&]() -> absl::StatusOr<std::optional<FrameChunk>> {
          std::optional<pipeline::PipelineOutput> out = pipeline_->Next();
          if (!out) return std::nullopt;
          FrameChunk c;
          c.kind = out->kind == pipeline::OutputKind::kPreview ? ChunkKind::kPreview
                                                              : ChunkKind::kFinal;
          c.first_frame = static_cast<int>(out->first_frame);
          c.frame_count = static_cast<int>(out->frames.size(0));
          c.height = static_cast<int>(out->frames.size(1));
          c.width = static_cast<int>(out->frames.size(2));
          const uint8_t* data = out->frames.data_ptr<uint8_t>();
          c.rgb.assign(data, data + out->frames.numel());
          return c;
        });
    // A rollout that threw (cancel included) must not be resumed.
    if (!chunk.ok()) failure_ = chunk.status();
    return chunk;
  }

  int output_frames() const override {
    return static_cast<int>(pipeline::StreamingPipeline::FinalFrames(latent_frames_, refine_));
  }
  bool emits_previews() const override { return preview_; }

 private:
  // The pipeline's latent source (its producer thread): the next Stage-1 chunk.
  std::optional<pipeline::LatentChunk> NextLatents();
  // The rollout was cancelled, or is being torn down (the runner gave up on it).
  bool Stopping() const { return stopping_.load() || control_.cancelled(); }

  const std::shared_ptr<const SanaShared> shared_;
  RolloutControl& control_;
  const int64_t latent_frames_;
  const bool refine_, preview_;
  const ltx2::Ltx2TextContext* const refiner_text_;  // in SanaShared; null without refining
  std::unique_ptr<sana::StreamingRollout> streaming_;
  // While alive, the batcher expects this rollout back at every chunk boundary.
  std::unique_ptr<sana::StreamingBatcher::Membership> batch_membership_;
  std::unique_ptr<sana::BidirectionalRollout> bidirectional_;
  // Bidirectional: the whole clip's Stage-1 (and refined) latents, handed out chunk by chunk.
  at::Tensor clip_, refined_clip_;
  int64_t next_latent_ = 0;
  std::atomic<bool> stopping_{false};
  std::unique_ptr<pipeline::StreamingPipeline> pipeline_;  // last: its threads use the above
  absl::Status failure_;
};

std::optional<pipeline::LatentChunk> SanaRollout::NextLatents() {
  const sana::StepCallback on_step = [this](int step, int total_steps) {
    control_.OnStep(ModelStage::kBackbone, step, total_steps);
    return !Stopping();
  };
  if (streaming_) {
    if (streaming_->done()) return std::nullopt;
    StageTimer timer(control_, ModelStage::kBackbone);
    const std::function<bool()> cancelled = [this] { return Stopping(); };
    at::Tensor latents = shared_->batcher->NextChunk(*streaming_, on_step, cancelled);
    // The last chunk is done: stop holding batch-mates back at chunk boundaries.
    if (streaming_->done()) batch_membership_.reset();
    return pipeline::LatentChunk{std::move(latents), {}};
  }
  // Bidirectional: nothing exists until every step is done; then the clip (refined offline in
  // one sequence, sana-wm-spec §5.2) is decoded in the streaming layout 1 + 3, 3, ... frames.
  if (!clip_.defined()) {
    {
      StageTimer timer(control_, ModelStage::kBackbone);
      clip_ = bidirectional_->Run(on_step);
    }
    if (refine_) {
      StageTimer timer(control_, ModelStage::kRefiner);
      const int total = shared_->refiner_options.steps();
      refined_clip_ = ltx2::RefineOffline(
          *shared_->refiner, clip_, *refiner_text_, shared_->refiner_options,
          [this, total](int step) {
            control_.OnStep(ModelStage::kRefiner, step, total);
            return !Stopping();
          });
    }
  }
  const int64_t frames = clip_.size(2);
  if (next_latent_ >= frames) return std::nullopt;
  const int64_t chunk_size = shared_->config.chunk_size;
  const int64_t count =
      std::min<int64_t>(next_latent_ == 0 ? 1 + chunk_size : chunk_size, frames - next_latent_);
  pipeline::LatentChunk chunk{clip_.narrow(2, next_latent_, count), {}};
  if (refined_clip_.defined()) chunk.refined = refined_clip_.narrow(2, next_latent_, count);
  next_latent_ += count;
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
                                       const PromptEmbedding& prompt,
                                       const ltx2::Ltx2TextContext* refiner_text,
                                       RolloutControl& control) const;

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
  const bool refine = options->refine.value_or(shared_->refiner != nullptr);
  if (refine && shared_->refiner == nullptr) {
    return absl::InvalidArgumentError(
        "model_options.refine: this worker runs sana-wm without the refiner (--refiner-weights "
        "none)");
  }
  if (options->preview && !refine) {
    return absl::InvalidArgumentError(
        "model_options.preview: needs refine=on (without the refiner the preview would be the "
        "final video)");
  }
  const ltx2::Ltx2TextContext* refiner_text = nullptr;
  if (refine) {
    const auto it = shared_->refiner_prompts.find(options->prompt);
    if (it == shared_->refiner_prompts.end()) {
      std::vector<std::string> names;
      for (const auto& [name, unused] : shared_->refiner_prompts) names.push_back(name);
      return absl::InvalidArgumentError(absl::StrCat(
          "model_options.prompt: no refiner prompt embedding \"", options->prompt,
          "\" (available: ", absl::StrJoin(names, ", "), "; or refine=off)"));
    }
    refiner_text = &it->second;
  }
  StageTimer timer(control, ModelStage::kImageEncode);
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout =
      CatchSana("image encode", [&]() -> absl::StatusOr<std::unique_ptr<ModelRollout>> {
        return Encode(spec, *options, prompt->second, refiner_text, control);
      });
  if (rollout.ok()) control.OnStep(ModelStage::kImageEncode, 0, 1);
  return rollout;
}

std::unique_ptr<ModelRollout> SanaWmModel::Encode(const RolloutSpec& spec,
                                                  const SanaOptions& options,
                                                  const PromptEmbedding& prompt,
                                                  const ltx2::Ltx2TextContext* refiner_text,
                                                  RolloutControl& control) const {
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

  // The LTX-2 VAE encoder on the image resized + centre-cropped to the native size (the same
  // plan the intrinsics followed), in [-1, 1]: latent frame 0 (sana-wm-spec §2).
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
  const at::Tensor latent = s.vae->Encode(cropped.unsqueeze(2)).contiguous();  // (1, C, 1, h, w)

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
  const bool refine = refiner_text != nullptr;
  return std::make_unique<SanaRollout>(shared_, options.mode, frames, std::move(inputs),
                                       options.steps, options.cfg, refine, options.preview,
                                       refiner_text, control);
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
  // The VAE: decode one latent frame (2x2 latents: reflect padding needs >= 2).
  const at::Tensor z = at::zeros({1, cfg.in_channels, 1, 2, 2}, f32);
  if (!at::isfinite(s.vae->DecodeCausal(z)).all().item<bool>()) {
    return absl::InternalError("sana-wm warm-up: the VAE decode produced non-finite values");
  }
  // The refiner: one offline refinement of a sink + 1 frame at 2x2 latents.
  if (s.refiner) {
    const at::Tensor refined = ltx2::RefineOffline(
        *s.refiner, at::zeros({1, cfg.in_channels, 2, 2, 2}, f32),
        s.refiner_prompts.at(kDefaultPrompt), s.refiner_options);
    if (!at::isfinite(refined.to(at::kFloat)).all().item<bool>()) {
      return absl::InternalError("sana-wm warm-up: the refiner produced non-finite values");
    }
  }
  return absl::OkStatus();
}

// Reads prompt embeddings (see SanaWmConfig::prompt_embeddings) of `channels` features into
// `prompts`; the entry "uncond" goes to `uncond` when given (Stage-1's CFG embedding).
void LoadPromptEmbeddings(const std::string& path, int64_t channels, c10::Device device,
                          std::map<std::string, PromptEmbedding>& prompts,
                          PromptEmbedding* uncond) {
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
    if (text.dim() != 2 || text.size(0) < 1 || text.size(1) != channels) {
      throw sana::ConfigError(path + ": prompt embedding \"" + name + "\" has shape " +
                              sana::ShapeString(text.sizes().vec()) + ", expected [L, " +
                              std::to_string(channels) + "]");
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
    PromptEmbedding embedding{text.view({1, 1, length, channels}).to(device),
                              mask.view({1, length}).to(device)};
    if (uncond != nullptr && name == kUncondPrompt) {
      *uncond = std::move(embedding);
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
  const int64_t length = cfg->model_max_length;
  shared->prompts[kDefaultPrompt] = {
      PlaceholderPrompt(length, cfg->caption_channels, kDefaultPromptSeed)
          .view({1, 1, length, cfg->caption_channels})
          .to(*device),
      at::ones({1, length}, at::TensorOptions().dtype(at::kLong).device(*device))};
  shared->uncond = {
      at::zeros({1, 1, length, cfg->caption_channels},
                at::TensorOptions().dtype(at::kFloat).device(*device)),
      at::ones({1, length}, at::TensorOptions().dtype(at::kLong).device(*device))};
  if (!config.prompt_embeddings.empty()) {
    try {
      LoadPromptEmbeddings(config.prompt_embeddings, cfg->caption_channels, *device,
                           shared->prompts, &shared->uncond);
    } catch (const sana::SafetensorsError& e) {
      return absl::InvalidArgumentError(absl::StrCat("prompt embeddings: ", e.what()));
    }
  }

  // LTX-2 VAE, at the preset's scale.
  absl::StatusOr<Ltx2Configs> ltx2_configs = Ltx2ConfigsFor(config);
  if (!ltx2_configs.ok()) return ltx2_configs.status();
  auto vae = std::make_shared<ltx2::VideoVae>(ltx2_configs->vae, *dtype, *device);
  if (config.vae_weights == "dummy") {
    vae->InitDummyWeights(config.dummy_seed);
  } else {
    try {
      vae->LoadWeights(sana::SafetensorsFile::Open(config.vae_weights));
    } catch (const sana::SafetensorsError& e) {
      return absl::InvalidArgumentError(absl::StrCat("vae_weights: ", e.what()));
    }
  }
  shared->vae = std::move(vae);

  // LTX-2 refiner and its prompt contexts (computed once per prompt).
  if (ltx2_configs->refiner) {
    auto refiner = std::make_shared<ltx2::Ltx2Transformer>(*ltx2_configs->refiner);
    if (config.refiner_weights == "dummy") {
      refiner->InitDummyWeights(config.dummy_seed, *dtype, *device);
    } else {
      try {
        refiner->LoadWeights(sana::SafetensorsFile::Open(config.refiner_weights), *dtype, *device);
      } catch (const sana::SafetensorsError& e) {
        return absl::InvalidArgumentError(absl::StrCat("refiner_weights: ", e.what()));
      }
    }
    const int64_t channels = ltx2_configs->refiner->caption_channels;
    std::map<std::string, PromptEmbedding> prompts;
    const int64_t tokens =
        cfg->name == "tiny" ? kRefinerPromptTokensTiny : kRefinerPromptTokensFull;
    prompts[kDefaultPrompt] = {
        PlaceholderPrompt(tokens, channels, kDefaultRefinerPromptSeed)
            .view({1, 1, tokens, channels})
            .to(*device),
        at::ones({1, tokens}, at::TensorOptions().dtype(at::kLong).device(*device))};
    if (!config.refiner_prompt_embeddings.empty()) {
      try {
        LoadPromptEmbeddings(config.refiner_prompt_embeddings, channels, *device, prompts,
                             /*uncond=*/nullptr);
      } catch (const sana::SafetensorsError& e) {
        return absl::InvalidArgumentError(absl::StrCat("refiner prompt embeddings: ", e.what()));
      }
    }
    for (const auto& [name, prompt] : prompts) {
      shared->refiner_prompts[name] =
          refiner->PrepareText(prompt.text.select(1, 0), prompt.mask, /*cache_kv=*/true);
    }
    shared->refiner = std::move(refiner);
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
  if (config.vae_weights.empty() || config.refiner_weights.empty()) {
    return absl::InvalidArgumentError(
        "vae_weights / refiner_weights: \"dummy\" or a safetensors path (refiner: or \"none\")");
  }
  absl::StatusOr<Ltx2Configs> ltx2_configs = Ltx2ConfigsFor(config);
  if (!ltx2_configs.ok()) return ltx2_configs.status();
  const uint64_t element = c10::elementSize(*dtype);
  ModelDescriptor descriptor;
  descriptor.name = kModelName;
  descriptor.preset = config.preset;
  descriptor.native_width = cfg->pixel_width;
  descriptor.native_height = cfg->pixel_height;
  descriptor.weights_bytes =
      sana::WeightBytes(*cfg, *dtype) +
      static_cast<uint64_t>(ltx2::VideoVae::ParameterCount(ltx2_configs->vae)) * element;
  if (ltx2_configs->refiner) {
    descriptor.weights_bytes +=
        static_cast<uint64_t>(ltx2::Ltx2Transformer::ParameterCount(*ltx2_configs->refiner)) *
        element;
  }
  descriptor.rollout_state_bytes =
      EstimateRolloutBytes(*cfg, ltx2_configs->vae,
                           ltx2_configs->refiner ? &*ltx2_configs->refiner : nullptr, *dtype);
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
