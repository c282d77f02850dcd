// End to end through real processes on loopback: wmserve-scheduler with local wmserve-worker
// children, driven through the public gRPC API and the wmctl binary. What the client received is
// decoded with FFmpeg and checked against the request.
#include <signal.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/rollout_client.h"
#include "client/trajectory_file.h"
#include "client/trajectory_presets.h"
#include "server/status_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/e2e/process_harness.h"
#include "worker/media/image_io.h"
#include "worker/media/video_decoder.h"

namespace wmserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kWidth = 640;
constexpr int kHeight = 352;
constexpr double kHfovDeg = 60;

// Horizontal shift s (pixels) that best explains `later(x, y) = first(x + s, y)` over a central
// patch, by exhaustive search over integer shifts with the sum of absolute differences.
int BestHorizontalShift(const media::RgbImage& first, const media::RgbImage& later, int max_shift) {
  const int cx = first.width / 2, cy = first.height / 2, half = 40;
  double best = 1e30;
  int best_s = 0;
  for (int s = -max_shift; s <= max_shift; ++s) {
    double sad = 0;
    for (int y = cy - half; y < cy + half; ++y) {
      for (int x = cx - half; x < cx + half; ++x) {
        const int xs = x + s;
        if (xs < 0 || xs >= first.width) { sad += 1e6; continue; }
        for (int c = 0; c < 3; ++c) {
          sad += std::abs(int(later.pixels[(y * later.width + x) * 3 + c]) -
                          int(first.pixels[(y * first.width + xs) * 3 + c]));
        }
      }
    }
    if (sad < best) {
      best = sad;
      best_s = s;
    }
  }
  return best_s;
}

class RolloutE2E : public ::testing::Test {
 protected:
  void StartScheduler(int workers, std::vector<std::string> extra = {}) {
    SchedulerConfig config;
    config.local_workers = workers;
    config.extra_args = std::move(extra);
    auto started = SchedulerProcess::Start(config);
    ASSERT_TRUE(started.ok()) << started.status();
    scheduler_ = *std::move(started);
    ASSERT_TRUE(scheduler_->WaitForReadyWorkers(workers, absl::Seconds(60)).ok())
        << scheduler_->Log();
  }
  void TearDown() override {
    if (HasFailure() && scheduler_) std::cerr << "---- scheduler log ----\n" << scheduler_->Log();
  }

  client::RolloutResult Run(const v1::RolloutRequest& req, client::RolloutCallbacks cb = {}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return client::RunRollout(scheduler_->stub(), req, cb, &ctx);
  }

  absl::StatusOr<v1::RolloutStatus> Status(const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetRolloutRequest req;
    req.set_rollout_id(id);
    v1::RolloutStatus out;
    grpc::Status s = scheduler_->stub().GetRollout(&ctx, req, &out);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return out;
  }

  // Runs `req` and SIGSTOPs the worker running it at the first chunk (a frozen worker keeps its
  // TCP stream open: only missed heartbeats reveal it); thaws it once the stream has ended.
  client::RolloutResult RunFreezingItsWorker(const v1::RolloutRequest& req, std::string* id,
                                             pid_t* frozen) {
    client::RolloutCallbacks cb;
    cb.on_accepted = [&](const v1::Accepted& a) { *id = a.rollout_id(); };
    cb.on_chunk = [&](const v1::VideoChunk&) {
      if (*frozen > 0) return;
      *frozen = WorkerPidOf(*id);
      if (*frozen > 0) ::kill(*frozen, SIGSTOP);
    };
    client::RolloutResult r = Run(req, cb);
    EXPECT_GT(*frozen, 0) << "no worker was frozen";
    if (*frozen > 0) ::kill(*frozen, SIGCONT);
    return r;
  }

  // Process id of the worker running rollout `id`, or -1.
  pid_t WorkerPidOf(const std::string& id) {
    auto status = Status(id);
    auto workers = scheduler_->Workers();
    if (!status.ok() || !workers.ok()) {
      ADD_FAILURE() << "rollout " << id << ": " << status.status() << " / " << workers.status();
      return -1;
    }
    for (const auto& w : workers->workers()) {
      if (w.worker_id() == status->worker_id()) return static_cast<pid_t>(w.pid());
    }
    ADD_FAILURE() << "rollout " << id << " on worker \"" << status->worker_id() << "\" state "
                  << v1::RolloutState_Name(status->state()) << ": " << workers->DebugString();
    return -1;
  }

  std::unique_ptr<SchedulerProcess> scheduler_;
};

TEST_F(RolloutE2E, ThreeConcurrentRolloutsOnTwoWorkersDecodeAsRequested) {
  StartScheduler(2);
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 1);
  constexpr int kFrames = 24;
  constexpr double kYawDeg = 5;
  const v1::RolloutRequest yaw = MakeWarpRequest(client::TrajectoryPreset::kYaw, kFrames, kYawDeg, image);
  const v1::RolloutRequest pan = MakeWarpRequest(client::TrajectoryPreset::kPan, kFrames, 0.3, image);
  const v1::RolloutRequest fwd = MakeWarpRequest(client::TrajectoryPreset::kForward, kFrames, 0.5, image);

  std::vector<client::RolloutResult> results(3);
  std::vector<std::thread> threads;
  const v1::RolloutRequest* reqs[] = {&yaw, &pan, &fwd};
  for (int i = 0; i < 3; ++i) threads.emplace_back([&, i] { results[i] = Run(*reqs[i]); });
  for (auto& t : threads) t.join();

  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(absl::StrCat("rollout ", i));
    const client::RolloutResult& r = results[i];
    ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
    ids.insert(r.rollout_id);
    EXPECT_THAT(r.init.mime_type(), HasSubstr("avc1."));
    EXPECT_EQ(r.final.outcome(), v1::OUTCOME_SUCCEEDED);
    EXPECT_EQ(r.final.frames_sent(), static_cast<uint32_t>(kFrames));
    auto video = media::DecodeVideo(r.video_bytes);
    ASSERT_TRUE(video.ok()) << video.status();
    EXPECT_EQ(video->width, kWidth);
    EXPECT_EQ(video->height, kHeight);
    ASSERT_EQ(static_cast<int>(video->frames.size()), kFrames);
    auto psnr = media::Psnr(video->frames[0], image);
    ASSERT_TRUE(psnr.ok());
    EXPECT_GE(*psnr, 30.0) << "first frame must reproduce the input image";
  }
  EXPECT_EQ(ids.size(), 3u) << "rollout ids must be unique";

  // Pure yaw: the image centre moves by fx * tan(yaw), with fx = (w/2) / tan(hfov/2).
  auto video = media::DecodeVideo(results[0].video_bytes);
  ASSERT_TRUE(video.ok());
  const double fx = (kWidth / 2.0) / std::tan(kHfovDeg / 2 * M_PI / 180);
  const double expected = fx * std::tan(kYawDeg * M_PI / 180);
  const int measured = BestHorizontalShift(video->frames[0], video->frames.back(), 80);
  EXPECT_NEAR(measured, expected, 2.0) << "positive yaw turns right: content moves left";
}

TEST_F(RolloutE2E, WmctlWritesAPlayableFileProgressively) {
  StartScheduler(1);
  const std::string dir = MakeTempDir();
  const std::string image = dir + "/in.png", traj = dir + "/orbit.json", out = dir + "/out.mp4";
  {
    auto png = media::EncodePng(MakeTestImage(kWidth, kHeight, 2));
    ASSERT_TRUE(png.ok());
    std::ofstream(image, std::ios::binary) << *png;
  }
  std::string output;
  ASSERT_EQ(RunCommand({WmctlBinary(), "trajectory", "orbit", "--frames", "33", "--degrees", "20",
                        "--width", std::to_string(kWidth), "--height", std::to_string(kHeight),
                        "--out", traj},
                       &output),
            0)
      << output;
  ASSERT_EQ(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "rollout", "--model",
                        "warp", "--image", image, "--trajectory", traj, "--out", out, "--width",
                        std::to_string(kWidth), "--height", std::to_string(kHeight)},
                       &output),
            0)
      << output;
  std::ifstream in(out, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  auto video = media::DecodeVideo(bytes.str());
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->frames.size(), 33u);
  EXPECT_EQ(video->width, kWidth);

  ASSERT_EQ(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "workers"}, &output), 0);
  EXPECT_THAT(output, HasSubstr("READY"));
  EXPECT_THAT(output, HasSubstr("warp"));
  EXPECT_NE(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "status", "r-nope"},
                       &output),
            0);
  EXPECT_THAT(output, HasSubstr("NOT_FOUND"));
}

TEST_F(RolloutE2E, WmctlAttachAppendsTheRestAfterADroppedConnection) {
  StartScheduler(1);
  const std::string dir = MakeTempDir();
  const std::string out = dir + "/video.mp4";
  v1::RolloutRequest req =
      MakeWarpRequest(client::TrajectoryPreset::kYaw, 320, 40, MakeTestImage(kWidth, kHeight, 21));
  req.set_reattach_grace_s(30);
  // The first connection saves init + chunks 0..2 to the file, then drops.
  std::string id, saved;
  uint32_t got = 0;
  grpc::ClientContext first;
  client::RolloutCallbacks cb;
  cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
  cb.on_init = [&](const v1::StreamInit& init) { saved = init.init_segment(); };
  cb.on_chunk = [&](const v1::VideoChunk& c) {
    if (got == 3) return;
    saved += c.data();
    if (++got == 3) first.TryCancel();
  };
  client::RunRollout(scheduler_->stub(), req, cb, &first);
  ASSERT_EQ(got, 3u);
  std::ofstream(out, std::ios::binary) << saved;

  std::string output;
  ASSERT_EQ(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "attach", id,
                        "--from-chunk", "3", "--out", out},
                       &output),
            0)
      << output;
  std::ifstream in(out, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  auto video = media::DecodeVideo(bytes.str());
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->frames.size(), 320u) << "chunks 0..2 from the first connection + the rest";

  EXPECT_EQ(RunCommand({WmctlBinary(), "--server", scheduler_->address(), "attach", "r-nope",
                        "--out", dir + "/x.mp4"},
                       &output),
            1);
  EXPECT_THAT(output, HasSubstr("NOT_FOUND"));
  EXPECT_EQ(RunCommand({WmctlBinary(), "rollout", "--image", "x", "--trajectory", "y", "--out",
                        "z", "--priority", "urgent"},
                       &output),
            2);
  EXPECT_THAT(output, HasSubstr("--priority"));
}

TEST_F(RolloutE2E, CancelMidStreamStopsTheWorkerWhichTakesTheNextRollout) {
  StartScheduler(1);
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 3);
  // Long enough that it cannot finish before the cancel lands.
  const v1::RolloutRequest long_req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 2000, 90, image);

  grpc::ClientContext ctx;
  client::RolloutCallbacks cb;
  std::string id;
  cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
  cb.on_chunk = [&](const v1::VideoChunk&) { ctx.TryCancel(); };
  const absl::Time start = absl::Now();
  client::RolloutResult r = client::RunRollout(scheduler_->stub(), long_req, cb, &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_FALSE(id.empty());

  // The worker notices within one chunk and is free again: a short rollout now completes.
  const v1::RolloutRequest short_req = MakeWarpRequest(client::TrajectoryPreset::kPan, 16, 0.2, image);
  client::RolloutResult next = Run(short_req);
  ASSERT_TRUE(next.ok()) << client::FormatStatus(next.status);
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
  auto status = Status(id);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), v1::ROLLOUT_STATE_CANCELLED);
  EXPECT_LT(status->frames_done(), 2000u);

  // The Cancel RPC: a queued-or-running rollout is cancelled; cancelling again is idempotent.
  grpc::ClientContext ctx2;
  std::string id2;
  std::thread canceller;
  client::RolloutCallbacks cb2;
  cb2.on_accepted = [&](const v1::Accepted& a) {
    id2 = a.rollout_id();
    canceller = std::thread([&, rid = a.rollout_id()] {
      for (int i = 0; i < 2; ++i) {
        grpc::ClientContext c;
        v1::CancelRequest creq;
        creq.set_rollout_id(rid);
        v1::CancelResponse cresp;
        grpc::Status s = scheduler_->stub().Cancel(&c, creq, &cresp);
        EXPECT_TRUE(s.ok()) << s.error_message();
        EXPECT_EQ(cresp.state(), v1::ROLLOUT_STATE_CANCELLED);
      }
    });
  };
  client::RolloutResult r2 = client::RunRollout(scheduler_->stub(), long_req, cb2, &ctx2);
  if (canceller.joinable()) canceller.join();
  EXPECT_EQ(r2.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(Run(short_req).ok());
}

TEST_F(RolloutE2E, KilledWorkerMidRolloutIsResumedOnTheRespawnedWorker) {
  StartScheduler(1);
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 4);
  constexpr int kFrames = 400;
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, kFrames, 60, image);
  std::string id;
  pid_t killed = -1;
  client::RolloutCallbacks cb;
  cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
  cb.on_chunk = [&](const v1::VideoChunk& c) {
    if (killed > 0 || c.index() < 2) return;
    killed = WorkerPidOf(id);
    ASSERT_GT(killed, 0);
    ::kill(killed, SIGKILL);
  };
  client::RolloutResult r = Run(req, cb);
  ASSERT_GT(killed, 0);
  // The stream completes: chunks arrive 0..N-1 exactly once (RunRollout checks the order and
  // the contiguous frame ranges), and the video decodes to every requested frame.
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  for (size_t i = 0; i < r.chunks.size(); ++i) ASSERT_EQ(r.chunks[i].index(), i);
  auto video = media::DecodeVideo(r.video_bytes);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(static_cast<int>(video->frames.size()), kFrames);
  auto status = Status(id);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->resumes(), 1u);

  // The dead worker is listed DEAD, the respawned one serves.
  auto workers = scheduler_->Workers();
  ASSERT_TRUE(workers.ok());
  int dead = 0;
  for (const auto& w : workers->workers()) dead += w.state() == v1::WORKER_STATE_DEAD;
  EXPECT_EQ(dead, 1);
  auto metrics = HttpGet(scheduler_->metrics_address(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr("wmserve_worker_restarts_total{reason=\"signal\"} 1"));
  EXPECT_THAT(*metrics, HasSubstr("wmserve_resumes_total 1"));
}

TEST_F(RolloutE2E, SilentWorkerIsDeclaredDeadAndItsRolloutMovesToAnother) {
  // A frozen worker keeps its TCP stream open; only the missing heartbeats reveal it.
  StartScheduler(2, {"--heartbeat-timeout-ms", "1500"});
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 7);
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 600, 90, image);
  std::string id;
  pid_t frozen = -1;
  client::RolloutResult r = RunFreezingItsWorker(req, &id, &frozen);
  ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  EXPECT_EQ(r.final.frames_sent(), 600u);
  auto status = Status(id);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->resumes(), 1u);
  EXPECT_THAT(scheduler_->Log(), HasSubstr("no heartbeat"));
  // Thawed, the worker finds its stream closed, registers again and serves.
  ASSERT_TRUE(scheduler_->WaitForReadyWorkers(2, absl::Seconds(60)).ok());
}

TEST_F(RolloutE2E, NoWorkerLeftFailsUnavailableWithRetryHint) {
  StartScheduler(1, {"--heartbeat-timeout-ms", "1500", "--no-worker-timeout-s", "2"});
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 9);
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 2000, 90, image);
  std::string id;
  pid_t frozen = -1;
  client::RolloutResult r = RunFreezingItsWorker(req, &id, &frozen);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << client::FormatStatus(r.status);
  EXPECT_THAT(r.status.error_message(), HasSubstr("no worker serving model warp"));
  const auto retry = RetryAfter(r.status);
  ASSERT_TRUE(retry.has_value()) << "UNAVAILABLE must carry a google.rpc.RetryInfo";
  EXPECT_GT(*retry, absl::ZeroDuration());
}

TEST_F(RolloutE2E, ConfigFileSetsFlagsAndCommandLineWins) {
  const std::string dir = MakeTempDir();
  const std::string conf = dir + "/scheduler.conf";
  // max-queue from the file; --local-workers on the command line (1) beats the file's 3.
  std::ofstream(conf) << "# test config\nmax-queue = 1\nlocal_workers = 3\nmodels = \"warp\"\n";
  StartScheduler(1, {"--config", conf});
  auto workers = scheduler_->Workers();
  ASSERT_TRUE(workers.ok());
  EXPECT_EQ(workers->workers_size(), 1);
  // With one worker busy and a queue of one, a third concurrent rollout is refused at once.
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 8);
  const v1::RolloutRequest long_req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 2000, 90, image);
  grpc::ClientContext c1, c2;
  std::thread t1([&] { client::RunRollout(scheduler_->stub(), long_req, {}, &c1); });
  std::thread t2;
  for (int i = 0; i < 200; ++i) {
    auto w = scheduler_->Workers();
    if (w.ok() && w->workers(0).running_rollouts() == 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  t2 = std::thread([&] { client::RunRollout(scheduler_->stub(), long_req, {}, &c2); });
  client::RolloutResult third;
  for (int i = 0; i < 100; ++i) {  // until the second one is queued
    third = Run(MakeWarpRequest(client::TrajectoryPreset::kPan, 8, 0.2, image));
    if (third.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.status.error_message(), HasSubstr("queue full"));
  c1.TryCancel();
  c2.TryCancel();
  t1.join();
  t2.join();
}

TEST_F(RolloutE2E, BadInputGetsPreciseStatusAndServerStaysUp) {
  StartScheduler(1);
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 5);
  const v1::RolloutRequest good = MakeWarpRequest(client::TrajectoryPreset::kYaw, 8, 5, image);

  struct Case {
    std::string name;
    std::function<void(v1::RolloutRequest&)> mutate;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"undecodable image", [](auto& r) { r.set_image(std::string("\x89PNG\r\n\x1a\nxxxxgarbage", 20)); },
       grpc::StatusCode::INVALID_ARGUMENT, "image"},
      {"not an image", [](auto& r) { r.set_image("hello world, certainly not a picture"); },
       grpc::StatusCode::INVALID_ARGUMENT, "image"},
      {"empty image", [](auto& r) { r.clear_image(); }, grpc::StatusCode::INVALID_ARGUMENT, "image"},
      {"zero frames", [](auto& r) { r.set_num_frames(0); }, grpc::StatusCode::INVALID_ARGUMENT,
       "num_frames"},
      {"NaN in pose", [](auto& r) { r.mutable_trajectory()->mutable_poses(3)->set_c2w(3, NAN); },
       grpc::StatusCode::INVALID_ARGUMENT, "poses[3]"},
      {"Inf in pose", [](auto& r) { r.mutable_trajectory()->mutable_poses(2)->set_c2w(0, INFINITY); },
       grpc::StatusCode::INVALID_ARGUMENT, "poses[2]"},
      {"non-orthonormal rotation", [](auto& r) { r.mutable_trajectory()->mutable_poses(1)->set_c2w(0, 1.5); },
       grpc::StatusCode::INVALID_ARGUMENT, "orthonormal"},
      {"trajectory length != frames", [](auto& r) { r.set_num_frames(9); },
       grpc::StatusCode::INVALID_ARGUMENT, "poses"},
      {"negative focal length", [](auto& r) { r.mutable_trajectory()->mutable_intrinsics(0)->set_fx(-500); },
       grpc::StatusCode::INVALID_ARGUMENT, "fx"},
      {"unknown model", [](auto& r) { r.set_model("no-such-model"); }, grpc::StatusCode::NOT_FOUND,
       "no-such-model"},
      {"oversized image", [](auto& r) { r.set_image(std::string(40u << 20, 'x')); },
       grpc::StatusCode::INVALID_ARGUMENT, "limit"},
      {"unknown model option", [](auto& r) { (*r.mutable_model_options())["bogus"] = "1"; },
       grpc::StatusCode::INVALID_ARGUMENT, "bogus"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::RolloutRequest bad = good;
    c.mutate(bad);
    client::RolloutResult r = Run(bad);
    EXPECT_EQ(r.status.error_code(), c.code) << client::FormatStatus(r.status);
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message));
  }
  // Still serving.
  client::RolloutResult ok = Run(good);
  EXPECT_TRUE(ok.ok()) << client::FormatStatus(ok.status);
}

TEST_F(RolloutE2E, HealthMetricsAndGracefulShutdown) {
  StartScheduler(1);
  auto channel = client::MakeChannel(scheduler_->address());
  auto health = grpc::health::v1::Health::NewStub(channel);
  {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }

  // A rollout in flight when SIGTERM arrives still completes; the scheduler then exits 0.
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 6);
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 96, 30, image);
  grpc::ClientContext ctx;
  client::RolloutCallbacks cb;
  bool signalled = false;
  absl::StatusOr<int> exit_code = absl::UnknownError("not signalled");
  std::thread stopper;
  cb.on_chunk = [&](const v1::VideoChunk&) {
    if (signalled) return;
    signalled = true;
    auto metrics = HttpGet(scheduler_->metrics_address(), "/metrics");
    ASSERT_TRUE(metrics.ok());
    EXPECT_THAT(*metrics, HasSubstr("wmserve_rollouts_running 1"));
    stopper = std::thread([&] { exit_code = scheduler_->SignalAndWait(SIGTERM, absl::Seconds(60)); });
  };
  client::RolloutResult r = client::RunRollout(scheduler_->stub(), req, cb, &ctx);
  stopper.join();
  EXPECT_TRUE(r.ok()) << client::FormatStatus(r.status);
  EXPECT_EQ(r.final.frames_sent(), 96u);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

}  // namespace
}  // namespace wmserve::testing
