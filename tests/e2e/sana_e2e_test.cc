// End to end through real processes: a scheduler with one local worker serving `sana-wm` (tiny
// preset, dummy weights) on the CPU; a streaming rollout over the public gRPC API, its video
// decoded with FFmpeg and checked against the model's chunk layout and native size. Co-batching:
// two concurrent rollouts are packed onto one of two workers and share batched forwards there.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/time/time.h"
#include "client/rollout_client.h"
#include "client/trajectory_presets.h"
#include "tests/e2e/process_harness.h"
#include "worker/media/image_io.h"
#include "worker/media/video_decoder.h"

namespace wmserve::testing {
namespace {

// The tiny preset's native size (its config's wmserve_pixel_size: a 2x4 latent grid through the
// tiny LTX-2 VAE's x32).
constexpr int kNativeWidth = 128;
constexpr int kNativeHeight = 64;

// The model renders at its native size only; the image may be any size.
v1::RolloutRequest MakeSanaRequest(int frames, const media::RgbImage& image,
                                   const std::map<std::string, std::string>& options = {}) {
  v1::RolloutRequest req = MakeModelRequest("sana-wm", client::TrajectoryPreset::kYaw, frames,
                                            /*degrees=*/10, image, /*seed=*/7, options);
  req.mutable_output()->set_width(kNativeWidth);
  req.mutable_output()->set_height(kNativeHeight);
  return req;
}

class SanaE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    SchedulerConfig config;
    config.local_workers = 1;
    config.worker_args = "--device cpu --threads 1 --model sana-wm --preset tiny --weights dummy";
    config.extra_args = {"--models", "warp,sana-wm"};
    auto started = SchedulerProcess::Start(config);
    ASSERT_TRUE(started.ok()) << started.status();
    scheduler_ = *std::move(started);
    ASSERT_TRUE(scheduler_->WaitForReadyWorkers(1, absl::Seconds(60)).ok()) << scheduler_->Log();
  }
  void TearDown() override {
    if (HasFailure() && scheduler_) std::cerr << "---- scheduler log ----\n" << scheduler_->Log();
  }

  client::RolloutResult Run(const v1::RolloutRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return client::RunRollout(scheduler_->stub(), req, {}, &ctx);
  }

  std::unique_ptr<SchedulerProcess> scheduler_;
};

TEST_F(SanaE2E, RefinedRolloutOf49FramesStreams48FramesInTwoChunks) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  client::RolloutResult r = Run(MakeSanaRequest(49, image));
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  EXPECT_EQ(r.final.outcome(), v1::OUTCOME_SUCCEEDED);
  // 7 latent frames = chunks of 4 + 3 latent frames = 25 + 24 pixel frames; the refiner's sink
  // (the conditioning frame) is not part of the video: 48 frames.
  EXPECT_EQ(r.init.frames_total(), 48u);
  EXPECT_EQ(r.final.frames_sent(), 48u);
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].frame_count(), 24u);
  EXPECT_EQ(r.chunks[1].frame_count(), 24u);
  EXPECT_TRUE(r.preview_chunks.empty());
  auto video = media::DecodeVideo(r.video_bytes);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->width, kNativeWidth);
  EXPECT_EQ(video->height, kNativeHeight);
  EXPECT_EQ(static_cast<int>(video->frames.size()), 48);
}

TEST_F(SanaE2E, UnrefinedRolloutKeepsEveryFrame) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  client::RolloutResult r = Run(MakeSanaRequest(49, image, {{"refine", "off"}}));
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  EXPECT_EQ(r.final.frames_sent(), 49u);
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].frame_count(), 25u);
  auto video = media::DecodeVideo(r.video_bytes);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(static_cast<int>(video->frames.size()), 49);
}

TEST_F(SanaE2E, PreviewChunksArriveTaggedAheadOfEachFinalChunk) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  std::vector<v1::ChunkKind> order;
  client::RolloutCallbacks callbacks;
  callbacks.keep_video_bytes = true;
  callbacks.on_chunk = [&](const v1::VideoChunk& chunk) { order.push_back(chunk.kind()); };
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  client::RolloutResult r = client::RunRollout(
      scheduler_->stub(), MakeSanaRequest(73, image, {{"preview", "on"}}), callbacks, &ctx);
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  // 3 chunks, each PREVIEW (Stage-1, 25 then 24 frames) before its FINAL (refined, 24 frames).
  EXPECT_THAT(order, ::testing::ElementsAre(v1::CHUNK_KIND_PREVIEW, v1::CHUNK_KIND_FINAL,
                                            v1::CHUNK_KIND_PREVIEW, v1::CHUNK_KIND_FINAL,
                                            v1::CHUNK_KIND_PREVIEW, v1::CHUNK_KIND_FINAL));
  ASSERT_EQ(r.preview_chunks.size(), 3u);
  ASSERT_EQ(r.chunks.size(), 3u);
  EXPECT_EQ(r.preview_chunks[0].frame_count(), 25u);
  EXPECT_EQ(r.final.frames_sent(), 72u);
  EXPECT_EQ(r.final.chunks_sent(), 3u);
  // Two independent, decodable videos.
  auto final_video = media::DecodeVideo(r.video_bytes);
  ASSERT_TRUE(final_video.ok()) << final_video.status();
  EXPECT_EQ(static_cast<int>(final_video->frames.size()), 72);
  auto preview_video = media::DecodeVideo(r.preview_video_bytes);
  ASSERT_TRUE(preview_video.ok()) << preview_video.status();
  EXPECT_EQ(static_cast<int>(preview_video->frames.size()), 73);
}

TEST_F(SanaE2E, WmctlWritesTheRefinedVideoAndThePreviewToTwoFiles) {
  const std::string dir = MakeTempDir();
  const std::string image = dir + "/in.png", traj = dir + "/yaw.json";
  const std::string out = dir + "/final.mp4", preview = dir + "/preview.mp4";
  {
    auto png = media::EncodePng(MakeTestImage(320, 180, 2));
    ASSERT_TRUE(png.ok());
    std::ofstream(image, std::ios::binary) << *png;
  }
  std::string output;
  ASSERT_EQ(RunCommand({WmctlBinary(), "trajectory", "yaw", "--frames", "49", "--degrees", "10",
                        "--width", "320", "--height", "180", "--out", traj},
                       &output),
            0)
      << output;
  ASSERT_EQ(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "rollout", "--model",
                        "sana-wm", "--image", image, "--trajectory", traj, "--out", out,
                        "--preview-out", preview},
                       &output),
            0)
      << output;
  auto frames_in = [](const std::string& path) -> int {
    std::ifstream in(path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    auto video = media::DecodeVideo(bytes.str());
    EXPECT_TRUE(video.ok()) << path << ": " << video.status();
    return video.ok() ? static_cast<int>(video->frames.size()) : -1;
  };
  EXPECT_EQ(frames_in(out), 48);      // refined: the conditioning frame dropped
  EXPECT_EQ(frames_in(preview), 49);  // Stage-1, every frame
  EXPECT_THAT(output, ::testing::HasSubstr("2 preview chunks"));
}

TEST_F(SanaE2E, CancelDuringTheRefinerEndsTheRolloutPromptly) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  client::RolloutCallbacks callbacks;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  // Cancel on the first refiner progress event: the worker must stop and report CANCELLED
  // instead of finishing the 20-chunk rollout.
  callbacks.on_progress = [&](const v1::Progress& p) {
    if (p.stage() == v1::STAGE_REFINER) ctx.TryCancel();
  };
  client::RolloutResult r = client::RunRollout(
      scheduler_->stub(), MakeSanaRequest(24 * 20 + 1, image), callbacks, &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << client::FormatStatus(r.status);
  EXPECT_LT(r.chunks.size(), 20u);
  // The worker is free again: a new rollout runs to completion.
  client::RolloutResult next = Run(MakeSanaRequest(25, image));
  ASSERT_TRUE(next.ok()) << client::FormatStatus(next.status);
  EXPECT_EQ(next.final.frames_sent(), 24u);
}

TEST_F(SanaE2E, ModelRulesComeBackAsInvalidArgument) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  client::RolloutResult r = Run(MakeSanaRequest(50, image));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), ::testing::HasSubstr("24k+1"));
  r = Run(MakeSanaRequest(49, image, {{"depth", "2"}}));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), ::testing::HasSubstr("model_options.depth"));
}


// The value of the sample line that starts with `series` (e.g. `wmserve_batch_size_count `) in
// a Prometheus text exposition, or -1 if there is none.
double SampleValue(const std::string& exposition, const std::string& series) {
  std::istringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series, 0) == 0) return std::strtod(line.c_str() + series.size(), nullptr);
  }
  return -1;
}

class SanaCoBatchE2E : public SanaE2E {
 protected:
  void SetUp() override {
    SchedulerConfig config;
    config.local_workers = 2;
    // Two slots per worker, batches of 2. The gather window is made long (a rollout waits for
    // its batch-mate at every chunk boundary) so that batching does not depend on timing here.
    config.worker_args =
        "--device cpu --threads 1 --model sana-wm --preset tiny --weights dummy "
        "--max-concurrent 2 --max-batch 2 --batch-gather-fraction 1000 "
        "--batch-gather-max-ms 20000";
    config.extra_args = {"--models", "sana-wm"};
    auto started = SchedulerProcess::Start(config);
    ASSERT_TRUE(started.ok()) << started.status();
    scheduler_ = *std::move(started);
    ASSERT_TRUE(scheduler_->WaitForReadyWorkers(2, absl::Seconds(60)).ok()) << scheduler_->Log();
  }
};

TEST_F(SanaCoBatchE2E, CompatibleRolloutsArePackedOntoOneWorkerAndShareForwards) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  // 145 frames = 6 chunks each: they meet in the steady state (chunk >= 2) whatever the stagger.
  // Refined: 144 frames out.
  constexpr int kFrames = 145;
  client::RolloutResult results[2];
  std::thread second([&] { results[1] = Run(MakeSanaRequest(kFrames, image)); });
  results[0] = Run(MakeSanaRequest(kFrames, image));
  second.join();
  std::string worker_id;
  for (const client::RolloutResult& r : results) {
    ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
    EXPECT_EQ(r.final.frames_sent(), static_cast<uint32_t>(kFrames - 1));
    ASSERT_EQ(r.chunks.size(), 6u);
    auto video = media::DecodeVideo(r.video_bytes);
    ASSERT_TRUE(video.ok()) << video.status();
    EXPECT_EQ(static_cast<int>(video->frames.size()), kFrames - 1);
    // Packing: both on the same worker although the other one was idle.
    grpc::ClientContext ctx;
    v1::GetRolloutRequest get;
    get.set_rollout_id(r.rollout_id);
    v1::RolloutStatus status;
    ASSERT_TRUE(scheduler_->stub().GetRollout(&ctx, get, &status).ok());
    if (worker_id.empty()) worker_id = status.worker_id();
    EXPECT_EQ(status.worker_id(), worker_id);
  }
  // That worker ran some backbone chunk with both rollouts in one batched forward.
  auto workers = scheduler_->Workers();
  ASSERT_TRUE(workers.ok()) << workers.status();
  double batched = 0, chunks = 0;
  for (const v1::WorkerInfo& w : workers->workers()) {
    auto text = HttpGet(w.metrics_endpoint(), "/metrics");
    ASSERT_TRUE(text.ok()) << text.status();
    const double count = SampleValue(*text, "wmserve_batch_size_count ");
    const double alone = SampleValue(*text, "wmserve_batch_size_bucket{le=\"1\"} ");
    ASSERT_GE(count, 0) << *text;
    if (w.worker_id() == worker_id) {
      batched = count - alone;
      chunks = SampleValue(*text, "wmserve_batch_size_sum ");
    } else {
      EXPECT_EQ(count, 0) << "the other worker ran backbone chunks";
    }
  }
  EXPECT_GE(batched, 1) << "no batch of two on " << worker_id;
  EXPECT_EQ(chunks, 12) << "every rollout-chunk counted once";
}

}  // namespace
}  // namespace wmserve::testing
