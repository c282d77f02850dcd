// Tests for the `sana-wm` model adapter (worker/models/sana_wm_model.h) with the tiny preset and
// dummy weights: the streaming and bidirectional chunk contracts, determinism, request
// validation, cancellation (in Stage-1 and in the refiner), the LTX-2 VAE encode / decode and the
// refiner in the pipeline (refine, preview), prompt embeddings, and the size accounting of the
// 2.6B preset (computed, never allocated).
#include "worker/models/sana_wm_model.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model.h"
#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/vae.h"
#include "worker/models/ltx2/vae_pixels.h"
#include "worker/models/sana/dummy_weights.h"
#include "worker/models/sana/rollout.h"
#include "worker/models/sana/sana_config.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker {
namespace {

using ::testing::HasSubstr;

// The tiny preset's native size: its 2x4 latent grid through the tiny VAE's x32.
constexpr int kNativeWidth = 128;
constexpr int kNativeHeight = 64;

// Records progress and timings; cancels once `cancel_after_backbone_steps` backbone steps were
// reported (-1 = never).
class TestControl final : public RolloutControl {
 public:
  bool cancelled() const override {
    return (cancel_after_backbone_steps >= 0 && backbone_steps >= cancel_after_backbone_steps) ||
           (cancel_after_refiner_steps >= 0 && refiner_steps >= cancel_after_refiner_steps);
  }
  void OnStep(ModelStage stage, int step, int total_steps) override {
    if (stage == ModelStage::kBackbone) {
      ++backbone_steps;
      last_backbone_total = total_steps;
      EXPECT_GE(step, 0);
      EXPECT_LT(step, total_steps);
    }
    if (stage == ModelStage::kRefiner) ++refiner_steps;
  }
  void AddStageTime(ModelStage stage, absl::Duration elapsed) override {
    std::lock_guard<std::mutex> lock(mu);
    stage_time[stage] += elapsed;
  }
  std::mutex mu;

  // The model's pipeline reports from its own threads (model.h: RolloutControl is thread-safe).
  std::atomic<int> cancel_after_backbone_steps{-1};
  std::atomic<int> cancel_after_refiner_steps{-1};
  std::atomic<int> backbone_steps{0};
  std::atomic<int> last_backbone_total{0};
  std::atomic<int> refiner_steps{0};
  std::map<ModelStage, absl::Duration> stage_time;
};

std::unique_ptr<Model> TinyModel(SanaWmConfig config = {}) {
  absl::StatusOr<std::unique_ptr<Model>> model = CreateSanaWmModel(config);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// A 320x180 gradient image, a slow yaw at 60 degrees hfov (intrinsics in source pixels).
RolloutSpec MakeSpec(int frames, uint64_t seed = 7) {
  RolloutSpec spec;
  spec.image.width = 320;
  spec.image.height = 180;
  spec.image.pixels.resize(320 * 180 * 3);
  for (int y = 0; y < 180; ++y) {
    for (int x = 0; x < 320; ++x) {
      uint8_t* p = &spec.image.pixels[(y * 320 + x) * 3];
      p[0] = static_cast<uint8_t>(x * 255 / 319);
      p[1] = static_cast<uint8_t>(y * 255 / 179);
      p[2] = static_cast<uint8_t>((x + y) % 256);
    }
  }
  const double fx = 160.0 / std::tan(30.0 * M_PI / 180.0);
  for (int i = 0; i < frames; ++i) {
    const double a = 0.01 * i;
    CameraFrame camera;
    camera.c2w = {std::cos(a), 0, std::sin(a), 0, 0, 1, 0, 0, -std::sin(a), 0, std::cos(a), 0,
                  0, 0, 0, 1};
    camera.fx = camera.fy = fx;
    camera.cx = 160;
    camera.cy = 90;
    spec.cameras.push_back(camera);
  }
  spec.width = kNativeWidth;
  spec.height = kNativeHeight;
  spec.seed = seed;
  return spec;
}

struct RunResult {
  absl::Status status;
  std::vector<FrameChunk> chunks;
};

RunResult RunAll(Model& model, const RolloutSpec& spec, TestControl& control) {
  RunResult result;
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = model.StartRollout(spec, control);
  if (!rollout.ok()) {
    result.status = rollout.status();
    return result;
  }
  while (true) {
    absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
    if (!chunk.ok()) {
      result.status = chunk.status();
      return result;
    }
    if (!chunk->has_value()) return result;
    result.chunks.push_back(**std::move(chunk));
  }
}

// The chunks of one kind, in order.
std::vector<FrameChunk> OfKind(const std::vector<FrameChunk>& chunks, ChunkKind kind) {
  std::vector<FrameChunk> out;
  for (const FrameChunk& c : chunks) {
    if (c.kind == kind) out.push_back(c);
  }
  return out;
}

void ExpectChunksCover(const std::vector<FrameChunk>& all, int frames,
                       const std::vector<int>& sizes, ChunkKind kind = ChunkKind::kFinal) {
  const std::vector<FrameChunk> chunks = OfKind(all, kind);
  ASSERT_EQ(chunks.size(), sizes.size());
  int next = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    SCOPED_TRACE(i);
    const FrameChunk& c = chunks[i];
    EXPECT_EQ(c.first_frame, next);
    EXPECT_EQ(c.frame_count, sizes[i]);
    EXPECT_EQ(c.width, kNativeWidth);
    EXPECT_EQ(c.height, kNativeHeight);
    EXPECT_EQ(c.rgb.size(), static_cast<size_t>(c.frame_count) * c.width * c.height * 3);
    next += c.frame_count;
  }
  EXPECT_EQ(next, frames);
}

TEST(SanaWmModel, DescriptorIsTheTinyPresetsNativeSize) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  const ModelDescriptor& d = model->descriptor();
  EXPECT_EQ(d.name, "sana-wm");
  EXPECT_EQ(d.preset, "tiny");
  const sana::SanaConfig tiny = sana::SanaConfig::Preset("tiny");
  EXPECT_EQ(d.native_width, tiny.pixel_width);
  EXPECT_EQ(d.native_height, tiny.pixel_height);
  const uint64_t params =
      static_cast<uint64_t>(sana::SanaTransformer::ParameterCount(tiny)) +
      static_cast<uint64_t>(ltx2::VideoVae::ParameterCount(ltx2::VaeConfig::Preset("tiny"))) +
      static_cast<uint64_t>(
          ltx2::Ltx2Transformer::ParameterCount(ltx2::TransformerConfig::Preset("tiny")));
  EXPECT_EQ(d.weights_bytes, params * 4);
  EXPECT_GT(d.rollout_state_bytes, 0u);
  EXPECT_TRUE(model->WarmUp().ok());
}

TEST(SanaWmModel, StreamingRolloutOf49FramesIsTwoRefinedChunksAtTheNativeSize) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  {
    // (Its pipeline starts generating at once: a control of its own.)
    TestControl first;
    absl::StatusOr<std::unique_ptr<ModelRollout>> rollout =
        model->StartRollout(MakeSpec(49), first);
    ASSERT_TRUE(rollout.ok()) << rollout.status();
    EXPECT_EQ((*rollout)->output_frames(), 48);
    EXPECT_FALSE((*rollout)->emits_previews());
  }
  TestControl control;
  RunResult run = RunAll(*model, MakeSpec(49), control);
  ASSERT_TRUE(run.status.ok()) << run.status;
  // 49 pixel frames = 7 latent frames = chunks of 4 + 3 latent frames = 25 + 24 pixel frames,
  // minus the refiner's sink frame.
  ExpectChunksCover(run.chunks, 48, {24, 24});
  // 2 chunks x (4 denoising + 1 KV-save) forwards, reported within the chunk (total 5).
  EXPECT_EQ(control.backbone_steps, 10);
  EXPECT_EQ(control.last_backbone_total, 5);
  // The refiner: the sink capture, then per block 3 Euler steps + 1 capture forward.
  EXPECT_EQ(control.refiner_steps, 1 + 4 + 4);
  EXPECT_GT(control.stage_time[ModelStage::kRefiner], absl::ZeroDuration());
  EXPECT_GT(control.stage_time[ModelStage::kBackbone], absl::ZeroDuration());
  EXPECT_GT(control.stage_time[ModelStage::kDecode], absl::ZeroDuration());
  EXPECT_GT(control.stage_time[ModelStage::kImageEncode], absl::ZeroDuration());
  // Not a constant video: the generated frames differ from frame 0.
  const FrameChunk& last = run.chunks.back();
  const size_t frame_bytes = static_cast<size_t>(kNativeWidth) * kNativeHeight * 3;
  EXPECT_NE(std::memcmp(run.chunks[0].rgb.data(),
                        last.rgb.data() + (last.frame_count - 1) * frame_bytes, frame_bytes),
            0);
}

TEST(SanaWmModel, SameSeedGivesIdenticalFramesAndAnotherSeedDoesNot) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  TestControl c1, c2, c3;
  RunResult a = RunAll(*model, MakeSpec(25, 11), c1);
  RunResult b = RunAll(*model, MakeSpec(25, 11), c2);
  RunResult other = RunAll(*model, MakeSpec(25, 12), c3);
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(b.status.ok()) << b.status;
  ASSERT_TRUE(other.status.ok()) << other.status;
  ASSERT_EQ(a.chunks.size(), 1u);
  ASSERT_EQ(b.chunks.size(), 1u);
  ASSERT_EQ(other.chunks.size(), 1u);
  EXPECT_TRUE(a.chunks[0].rgb == b.chunks[0].rgb);
  EXPECT_FALSE(a.chunks[0].rgb == other.chunks[0].rgb);
  // A second model instance (same dummy seed) reproduces it too.
  std::unique_ptr<Model> again = TinyModel();
  ASSERT_NE(again, nullptr);
  TestControl c4;
  RunResult d = RunAll(*again, MakeSpec(25, 11), c4);
  ASSERT_TRUE(d.status.ok()) << d.status;
  EXPECT_TRUE(a.chunks[0].rgb == d.chunks[0].rgb);
}

TEST(SanaWmModel, UnrefinedFirstFrameIsTheVaeRoundTripOfTheImage) {
  // Without the refiner, frame 0 is the causal decode of latent frame 0 (which depends on it
  // alone), and latent frame 0 is the VAE encode of the image: decode(encode(image)).
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  RolloutSpec spec = MakeSpec(25);
  const std::array<uint8_t, 3> colour = {200, 60, 110};
  for (size_t i = 0; i < spec.image.pixels.size(); ++i) spec.image.pixels[i] = colour[i % 3];
  spec.options["refine"] = "off";
  TestControl control;
  RunResult run = RunAll(*model, spec, control);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ExpectChunksCover(run.chunks, 25, {25});
  EXPECT_EQ(control.refiner_steps, 0);

  // The same VAE (tiny preset, dummy seed 0) on the uniform image at the native size.
  auto vae = std::make_shared<ltx2::VideoVae>(ltx2::VaeConfig::Preset("tiny"));
  vae->InitDummyWeights(0);
  at::Tensor image = at::zeros({1, 3, 1, kNativeHeight, kNativeWidth});
  for (int c = 0; c < 3; ++c) image.select(1, c).fill_(colour[c] / 127.5 - 1.0);
  const at::Tensor frame0 =
      ltx2::ToUint8Frames(vae->DecodeCausal(vae->Encode(image))).select(0, 0).contiguous();
  const uint8_t* expected = frame0.data_ptr<uint8_t>();
  int worst = 0;
  for (int64_t i = 0; i < frame0.numel(); ++i) {
    worst = std::max(worst, std::abs(static_cast<int>(run.chunks[0].rgb[i]) - expected[i]));
  }
  EXPECT_LE(worst, 1);
}

TEST(SanaWmModel, PreviewChunksPrecedeEachRefinedChunk) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  RolloutSpec spec = MakeSpec(49);
  spec.options["preview"] = "on";
  TestControl control;
  RunResult run = RunAll(*model, spec, control);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.chunks.size(), 4u);
  EXPECT_EQ(run.chunks[0].kind, ChunkKind::kPreview);
  EXPECT_EQ(run.chunks[1].kind, ChunkKind::kFinal);
  EXPECT_EQ(run.chunks[2].kind, ChunkKind::kPreview);
  EXPECT_EQ(run.chunks[3].kind, ChunkKind::kFinal);
  ExpectChunksCover(run.chunks, 49, {25, 24}, ChunkKind::kPreview);
  ExpectChunksCover(run.chunks, 48, {24, 24}, ChunkKind::kFinal);
  // The preview is the un-refined video: the same frames as a refine=off rollout.
  RolloutSpec plain = MakeSpec(49);
  plain.options["refine"] = "off";
  TestControl c2;
  RunResult unrefined = RunAll(*model, plain, c2);
  ASSERT_TRUE(unrefined.status.ok()) << unrefined.status;
  const std::vector<FrameChunk> previews = OfKind(run.chunks, ChunkKind::kPreview);
  ASSERT_EQ(unrefined.chunks.size(), previews.size());
  for (size_t i = 0; i < previews.size(); ++i) {
    EXPECT_TRUE(previews[i].rgb == unrefined.chunks[i].rgb) << "chunk " << i;
  }
  // ... and the refiner changes it.
  EXPECT_FALSE(OfKind(run.chunks, ChunkKind::kFinal)[1].rgb == previews[1].rgb);
}

TEST(SanaWmModel, BadFrameCountsAreInvalidArgumentWithTheRule) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  TestControl control;
  absl::StatusOr<std::unique_ptr<ModelRollout>> r = model->StartRollout(MakeSpec(50), control);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("num_frames 50"));
  EXPECT_THAT(r.status().message(), HasSubstr("24k+1"));
  // 33 = 8k+1 is fine for bidirectional rollouts but not for streaming ones.
  r = model->StartRollout(MakeSpec(33), control);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("24k+1"));
  RolloutSpec bidi = MakeSpec(34);
  bidi.options["mode"] = "bidirectional";
  r = model->StartRollout(bidi, control);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("8k+1"));
  r = model->StartRollout(MakeSpec(1), control);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SanaWmModel, UnknownOrMalformedOptionsAreInvalidArgument) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  TestControl control;
  RolloutSpec spec = MakeSpec(25);
  spec.options["depth"] = "2";
  absl::StatusOr<std::unique_ptr<ModelRollout>> r = model->StartRollout(spec, control);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("model_options.depth"));
  EXPECT_THAT(r.status().message(), HasSubstr("allowed: cfg, mode, preview, prompt, refine, steps"));

  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> bad = {
      {{{"mode", "causal"}}, "model_options.mode"},
      {{{"mode", "bidirectional"}, {"steps", "0"}}, "model_options.steps"},
      {{{"mode", "bidirectional"}, {"steps", "x"}}, "model_options.steps"},
      {{{"mode", "bidirectional"}, {"cfg", "nan"}}, "model_options.cfg"},
      {{{"steps", "8"}}, "only for mode=bidirectional"},
      {{{"cfg", "3"}}, "only for mode=bidirectional"},
      {{{"prompt", "nope"}}, "no prompt embedding \"nope\" (available: default)"},
      {{{"refine", "maybe"}}, "model_options.refine: must be on or off"},
      {{{"refine", "off"}, {"preview", "on"}}, "model_options.preview: needs refine=on"},
  };
  for (const auto& [options, message] : bad) {
    SCOPED_TRACE(message);
    RolloutSpec s = MakeSpec(25);
    s.options = options;
    r = model->StartRollout(s, control);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(message));
  }
}

TEST(SanaWmModel, OutputSizeMustBeNative) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  TestControl control;
  RolloutSpec spec = MakeSpec(25);
  spec.width = 640;
  spec.height = 352;
  absl::StatusOr<std::unique_ptr<ModelRollout>> r = model->StartRollout(spec, control);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("output.width/height"));
  EXPECT_THAT(r.status().message(), HasSubstr("128x64"));
  // 0x0 means native.
  spec.width = spec.height = 0;
  r = model->StartRollout(spec, control);
  EXPECT_TRUE(r.ok()) << r.status();
}

TEST(SanaWmModel, CancelStopsWithinOneStep) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  // Thresholds are set before StartRollout: the pipeline starts generating at once.
  TestControl control;
  control.cancel_after_backbone_steps = 2;
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout =
      model->StartRollout(MakeSpec(49), control);
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled);
  // The step callback saw the cancel at the step it was raised: no further forward ran.
  EXPECT_EQ(control.backbone_steps, 2);
  // The rollout stays cancelled.
  chunk = (*rollout)->NextChunk(control);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled);

  // Cancelled in the refiner (pipeline thread): the refiner's step callback stops it before the
  // next forward (Stage-1 of the next chunk may have run meanwhile, it stops at its next step).
  TestControl in_refiner;
  in_refiner.cancel_after_refiner_steps = 6;  // the sink capture + 5: block 2's first step
  rollout = model->StartRollout(MakeSpec(97), in_refiner);
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  absl::Status status;
  for (int i = 0; i < 4 && status.ok(); ++i) status = (*rollout)->NextChunk(in_refiner).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(in_refiner.refiner_steps, 6);  // the 6th step saw the cancel and ran no forward

  // Bidirectional: the same within its step loop.
  RolloutSpec bidi = MakeSpec(17);
  bidi.options = {{"mode", "bidirectional"}, {"steps", "6"}};
  TestControl control2;
  control2.cancel_after_backbone_steps = 3;
  rollout = model->StartRollout(bidi, control2);
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  chunk = (*rollout)->NextChunk(control2);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(control2.backbone_steps, 3);

  // Cancelled before the image encode.
  TestControl cancelled;
  cancelled.cancel_after_backbone_steps = 0;
  EXPECT_EQ(model->StartRollout(MakeSpec(25), cancelled).status().code(),
            absl::StatusCode::kCancelled);
}

TEST(SanaWmModel, BidirectionalRolloutEmitsEveryFrameAfterAllSteps) {
  std::unique_ptr<Model> model = TinyModel();
  ASSERT_NE(model, nullptr);
  RolloutSpec spec = MakeSpec(41);  // 8k+1, not 24k+1
  spec.options = {{"mode", "bidirectional"}, {"steps", "3"}, {"cfg", "4"}};
  TestControl control;
  RunResult run = RunAll(*model, spec, control);
  ASSERT_TRUE(run.status.ok()) << run.status;
  // 6 latent frames decoded as 4 + 2; refined offline in one sequence, the sink frame dropped.
  ExpectChunksCover(run.chunks, 40, {24, 16});
  EXPECT_EQ(control.backbone_steps, 3);
  EXPECT_EQ(control.last_backbone_total, 3);
  EXPECT_EQ(control.refiner_steps, 3);  // 3 Euler steps over the whole clip at once
  spec.options["refine"] = "off";
  TestControl unrefined;
  run = RunAll(*model, spec, unrefined);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ExpectChunksCover(run.chunks, 41, {25, 16});

  // The worker-wide default mode can be bidirectional; the request can switch back.
  SanaWmConfig config;
  config.mode = "bidirectional";
  std::unique_ptr<Model> bidi = TinyModel(config);
  ASSERT_NE(bidi, nullptr);
  RolloutSpec plain = MakeSpec(17);
  TestControl c2;
  run = RunAll(*bidi, plain, c2);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ExpectChunksCover(run.chunks, 16, {16});
  EXPECT_EQ(c2.last_backbone_total, 60);
  plain.options["mode"] = "streaming";
  TestControl c3;
  EXPECT_EQ(bidi->StartRollout(plain, c3).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SanaWmModel, Bf16WeightsRunAStreamingRollout) {
  SanaWmConfig config;
  config.dtype = "bf16";
  std::unique_ptr<Model> model = TinyModel(config);
  ASSERT_NE(model, nullptr);
  SanaWmConfig fp32;
  std::unique_ptr<Model> reference = TinyModel(fp32);
  ASSERT_NE(reference, nullptr);
  EXPECT_EQ(model->descriptor().weights_bytes * 2, reference->descriptor().weights_bytes);
  const absl::Status warm = model->WarmUp();
  EXPECT_TRUE(warm.ok()) << warm;
  TestControl control;
  RunResult run = RunAll(*model, MakeSpec(25), control);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ExpectChunksCover(run.chunks, 24, {24});
}

TEST(SanaWmModel, DummyWeightsGiveFiniteLatentsOverALongStreamingRollout) {
  c10::InferenceMode inference;
  const sana::SanaConfig cfg = sana::SanaConfig::Preset("tiny");
  std::unique_ptr<sana::SanaTransformer> model = sana::InitDummyWeights(cfg, 3);
  ASSERT_TRUE(model->loaded());
  const int64_t frames = 13;  // 4 + 3 + 3 + 3
  const int64_t h = cfg.latent_height(), w = cfg.latent_width();
  sana::RolloutInputs in;
  in.first_latent = at::randn({1, cfg.in_channels, 1, h, w});
  at::Tensor camera = at::zeros({1, frames, 20});
  for (int i = 0; i < 4; ++i) camera.select(2, i * 5).fill_(1.0);
  camera.narrow(2, 16, 2).fill_(2.0);
  camera.narrow(2, 18, 1).fill_(w / 2.0);
  camera.narrow(2, 19, 1).fill_(h / 2.0);
  in.camera_conditions = camera;
  in.chunk_plucker = at::randn({1, cfg.chunk_plucker_channels, frames, h, w});
  in.text = at::randn({1, 1, cfg.model_max_length, cfg.caption_channels});
  in.text_mask = at::ones({1, cfg.model_max_length}, at::kLong);
  in.seed = 5;
  sana::StreamingRollout rollout(*model, in);
  ASSERT_EQ(rollout.num_chunks(), 4);
  for (int i = 0; i < rollout.num_chunks(); ++i) {
    const at::Tensor latents = rollout.NextChunk([](int, int) { return true; });
    EXPECT_TRUE(at::isfinite(latents).all().item<bool>()) << "chunk " << i;
    EXPECT_LT(latents.abs().max().item<double>(), 1e3) << "chunk " << i;
  }
}

TEST(SanaWmModel, DummyGatesFollowTheTrainingInitRecipe) {
  // Only the small gate tensors of the 2.6B config are materialised here.
  const sana::SanaConfig cfg = sana::SanaConfig::Preset("sana-wm-2.6b");
  const auto expected = sana::SanaTransformer::ExpectedParameters(cfg);
  auto param = [&](const std::string& name) {
    return sana::DummyParameter(cfg, name, expected.at(name), 0, c10::ScalarType::Float,
                                c10::Device(c10::kCPU));
  };
  EXPECT_TRUE(param("blocks.0.attn.beta_proj.bias").eq(5.0).all().item<bool>());
  EXPECT_TRUE(param("blocks.0.attn.dt_bias").eq(-5.0).all().item<bool>());
  EXPECT_TRUE(param("blocks.0.attn.A_log").eq(0.0).all().item<bool>());
  EXPECT_TRUE(param("blocks.0.attn.gate_proj.bias").eq(0.0).all().item<bool>());
  const at::Tensor conv = param("blocks.0.attn.conv_k.weight");  // (C, 1, 4)
  EXPECT_TRUE(conv.select(2, 3).eq(1.0).all().item<bool>());
  EXPECT_TRUE(conv.narrow(2, 0, 3).eq(0.0).all().item<bool>());
  // Same seed and name -> same values; different seed -> different.
  const std::vector<int64_t> shape = {4, 8};
  const at::Tensor a = sana::DummyParameter(cfg, "blocks.0.attn.proj.weight", shape, 1,
                                            c10::ScalarType::Float, c10::Device(c10::kCPU));
  const at::Tensor b = sana::DummyParameter(cfg, "blocks.0.attn.proj.weight", shape, 1,
                                            c10::ScalarType::Float, c10::Device(c10::kCPU));
  const at::Tensor c = sana::DummyParameter(cfg, "blocks.0.attn.proj.weight", shape, 2,
                                            c10::ScalarType::Float, c10::Device(c10::kCPU));
  EXPECT_TRUE(a.equal(b));
  EXPECT_FALSE(a.equal(c));
  // bf16 straight away.
  EXPECT_EQ(sana::DummyParameter(cfg, "blocks.0.attn.proj.weight", shape, 1,
                                 c10::ScalarType::BFloat16, c10::Device(c10::kCPU))
                .scalar_type(),
            c10::ScalarType::BFloat16);
}

TEST(SanaWmModel, SizeAccountingOfThe26BPresetWithoutAllocating) {
  SanaWmConfig config;
  config.preset = "sana-wm-2.6b";
  config.dtype = "bf16";
  absl::StatusOr<ModelDescriptor> d = DescribeSanaWm(config);
  ASSERT_TRUE(d.ok()) << d.status();
  const sana::SanaConfig cfg = sana::SanaConfig::Preset("sana-wm-2.6b");
  int64_t count = 0;
  for (const auto& [name, shape] : sana::SanaTransformer::ExpectedParameters(cfg)) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    count += n;
  }
  // Spec §8: Stage-1 weights are 5.3 GB in bf16; ltx2-spec §1.10, §2.9: the VAE has
  // 1,222,479,601 parameters and the refiner's video-only path 13,041,520,768.
  const uint64_t stage1 = static_cast<uint64_t>(count) * 2;
  EXPECT_GT(stage1, 5.0e9);
  EXPECT_LT(stage1, 5.6e9);
  EXPECT_EQ(d->weights_bytes, stage1 + (uint64_t{694098881} + 528380720) * 2 +
                                  uint64_t{13041520768} * 2);
  EXPECT_EQ(d->native_width, 1280);
  EXPECT_EQ(d->native_height, 704);
  // Spec §4.3 / §8: the Stage-1 streaming state is ~1 GB per rollout; ltx2-spec §2.10: the
  // refiner's K/V window (14 frames x 48 layers at 880 tokens x 4096, bf16) ~9.7 GB; two VAE
  // decoder caches 2 x 0.6 GB; transients. At least the 14.3 GB measured at peak on an H100
  // (docs/BENCHMARKS.md), so that placement never under-reserves.
  EXPECT_GT(d->rollout_state_bytes, 14.3e9);
  EXPECT_LT(d->rollout_state_bytes, 20e9);
  SanaWmConfig no_refiner = config;
  no_refiner.refiner_weights = "none";
  absl::StatusOr<ModelDescriptor> stage1_only = DescribeSanaWm(no_refiner);
  ASSERT_TRUE(stage1_only.ok()) << stage1_only.status();
  // Without the refiner: Stage-1's cache and activations plus the VAE decoders.
  EXPECT_LT(stage1_only->rollout_state_bytes, 7e9);
  EXPECT_LT(stage1_only->rollout_state_bytes, d->rollout_state_bytes - 9e9);
  std::printf("sana-wm-2.6b bf16: weights %.3f GB, rollout state %.3f GB\n",
              d->weights_bytes / 1e9, d->rollout_state_bytes / 1e9);
  config.dtype = "fp32";
  d = DescribeSanaWm(config);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->weights_bytes, (stage1 + (uint64_t{694098881} + 528380720) * 2 +
                               uint64_t{13041520768} * 2) * 2);
}

TEST(SanaWmModel, BadConfigsAreRejected) {
  const std::vector<std::pair<SanaWmConfig, absl::StatusCode>> cases = [] {
    std::vector<std::pair<SanaWmConfig, absl::StatusCode>> out;
    SanaWmConfig c;
    c.preset = "huge";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    c = {};
    c.dtype = "fp16";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    c = {};
    c.mode = "causal";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    c = {};
    c.device = "gpu";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    c = {};
    c.weights = "/nonexistent/weights.safetensors";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    c = {};
    c.prompt_embeddings = "/nonexistent/prompts.safetensors";
    out.emplace_back(c, absl::StatusCode::kInvalidArgument);
    return out;
  }();
  for (const auto& [config, code] : cases) {
    SCOPED_TRACE(config.preset + " " + config.dtype + " " + config.mode + " " + config.device +
                 " " + config.weights + " " + config.prompt_embeddings);
    EXPECT_EQ(CreateSanaWmModel(config).status().code(), code);
  }
}

// --- prompt embeddings -----------------------------------------------------------------------

struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <typename T>
RawTensor Raw(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
              const std::vector<T>& values) {
  RawTensor t{name, dtype, std::move(shape), std::string(values.size() * sizeof(T), '\0')};
  std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// Minimal safetensors writer (little-endian host).
void WriteSafetensors(const std::string& path, const std::vector<RawTensor>& tensors) {
  std::string header = "{", data;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const RawTensor& t = tensors[i];
    std::string shape = "[";
    for (size_t j = 0; j < t.shape.size(); ++j) shape += (j ? "," : "") + std::to_string(t.shape[j]);
    shape += "]";
    header += (i ? "," : "") + std::string("\"") + t.name + "\":{\"dtype\":\"" + t.dtype +
              "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(data.size()) +
              "," + std::to_string(data.size() + t.bytes.size()) + "]}";
    data += t.bytes;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  const uint64_t n = header.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i));
  return v;
}

TEST(SanaWmModel, PromptEmbeddingsFromASafetensorsFile) {
  const sana::SanaConfig cfg = sana::SanaConfig::Preset("tiny");
  const int64_t l = 5, c = cfg.caption_channels;
  const std::string path = ::testing::TempDir() + "/sana_prompts.safetensors";
  WriteSafetensors(path, {Raw("sunny", "F32", {l, c}, Ramp(l * c, 2.0f)),
                          Raw("sunny.mask", "I64", {l}, std::vector<int64_t>{1, 1, 1, 0, 0}),
                          Raw("uncond", "F32", {1, l, c}, Ramp(l * c, 0.1f))});
  // The refiner's embedding of the same prompt (its own caption width), named alike.
  const int64_t rc = ltx2::TransformerConfig::Preset("tiny").caption_channels;
  const std::string refiner_path = ::testing::TempDir() + "/sana_refiner_prompts.safetensors";
  WriteSafetensors(refiner_path, {Raw("sunny", "F32", {l, rc}, Ramp(l * rc, 1.5f))});
  SanaWmConfig config;
  config.prompt_embeddings = path;
  config.refiner_prompt_embeddings = refiner_path;
  std::unique_ptr<Model> model = TinyModel(config);
  ASSERT_NE(model, nullptr);

  RolloutSpec spec = MakeSpec(25);
  TestControl c1, c2, c3;
  RunResult with_default = RunAll(*model, spec, c1);
  spec.options["prompt"] = "sunny";
  RunResult sunny = RunAll(*model, spec, c2);
  ASSERT_TRUE(with_default.status.ok()) << with_default.status;
  ASSERT_TRUE(sunny.status.ok()) << sunny.status;
  EXPECT_FALSE(with_default.chunks[0].rgb == sunny.chunks[0].rgb);
  spec.options["prompt"] = "rainy";
  absl::StatusOr<std::unique_ptr<ModelRollout>> r = model->StartRollout(spec, c3);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("available: default, sunny"));
  // The uncond entry is used by CFG, not offered as a prompt.
  spec.options = {{"mode", "bidirectional"}, {"steps", "2"}, {"prompt", "sunny"}};
  spec.cameras.resize(17);
  RunResult bidi = RunAll(*model, spec, c3);
  EXPECT_TRUE(bidi.status.ok()) << bidi.status;

  // A prompt the refiner has no embedding for: refused unless refine=off.
  SanaWmConfig stage1_only_prompts;
  stage1_only_prompts.prompt_embeddings = path;
  std::unique_ptr<Model> partial = TinyModel(stage1_only_prompts);
  ASSERT_NE(partial, nullptr);
  RolloutSpec sunny_spec = MakeSpec(25);
  sunny_spec.options["prompt"] = "sunny";
  r = partial->StartRollout(sunny_spec, c3);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("no refiner prompt embedding \"sunny\""));
  sunny_spec.options["refine"] = "off";
  EXPECT_TRUE(partial->StartRollout(sunny_spec, c3).ok());

  // Wrong caption width: rejected at load, naming the entry.
  const std::string bad = ::testing::TempDir() + "/sana_prompts_bad.safetensors";
  WriteSafetensors(bad, {Raw("narrow", "F32", {l, c - 1}, Ramp(l * (c - 1), 1.0f))});
  config.prompt_embeddings = bad;
  absl::StatusOr<std::unique_ptr<Model>> rejected = CreateSanaWmModel(config);
  ASSERT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rejected.status().message(), HasSubstr("narrow"));
  std::remove(path.c_str());
  std::remove(refiner_path.c_str());
  std::remove(bad.c_str());
}

}  // namespace
}  // namespace wmserve::worker
