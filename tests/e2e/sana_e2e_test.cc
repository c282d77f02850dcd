// End to end through real processes: a scheduler with one local worker serving `sana-wm` (tiny
// preset, dummy weights) on the CPU; a streaming rollout over the public gRPC API, its video
// decoded with FFmpeg and checked against the model's chunk layout and native size.
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <string>
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

// The tiny preset's native size (its config's wmserve_pixel_size).
constexpr int kNativeWidth = 1280;
constexpr int kNativeHeight = 704;

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

TEST_F(SanaE2E, StreamingRolloutOf49FramesStreamsTwoChunksAtTheNativeSize) {
  const media::RgbImage image = MakeTestImage(640, 352, 3);
  client::RolloutResult r = Run(MakeSanaRequest(49, image));
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  EXPECT_EQ(r.final.outcome(), v1::OUTCOME_SUCCEEDED);
  EXPECT_EQ(r.final.frames_sent(), 49u);
  // 7 latent frames = chunks of 4 + 3 latent frames = 25 + 24 pixel frames.
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].frame_count(), 25u);
  EXPECT_EQ(r.chunks[1].frame_count(), 24u);
  auto video = media::DecodeVideo(r.video_bytes);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->width, kNativeWidth);
  EXPECT_EQ(video->height, kNativeHeight);
  EXPECT_EQ(static_cast<int>(video->frames.size()), 49);
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

}  // namespace
}  // namespace wmserve::testing
