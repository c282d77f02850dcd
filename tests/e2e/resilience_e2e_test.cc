// Production-scheduler behaviour through real processes: workers killed mid-rollout, clients that
// drop and re-attach, idempotent resubmission, deadlines, overload, quarantine, and a long run of
// cancellations that must leave no rollout running and memory at its baseline.
#include <signal.h>

#include <atomic>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/rollout_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/status_util.h"
#include "tests/e2e/process_harness.h"
#include "worker/media/video_decoder.h"

namespace wmserve::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kW = 320;
constexpr int kH = 176;

// Resident set size of a process, bytes (VmRSS), or 0.
uint64_t RssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipWhitespace());
      uint64_t kb = 0;
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kb)) return kb * 1024;
    }
  }
  return 0;
}

class ResilienceE2E : public ::testing::Test {
 protected:
  void Start(int workers, std::vector<std::string> extra = {}, std::string worker_args = "") {
    SchedulerConfig config;
    config.local_workers = workers;
    config.extra_args = std::move(extra);
    if (!worker_args.empty()) config.worker_args = worker_args;
    auto started = SchedulerProcess::Start(config);
    ASSERT_TRUE(started.ok()) << started.status();
    s_ = *std::move(started);
    ASSERT_TRUE(s_->WaitForReadyWorkers(workers, absl::Seconds(60)).ok()) << s_->Log();
  }
  void TearDown() override {
    if (HasFailure() && s_) std::cerr << "---- scheduler log ----\n" << s_->Log();
  }

  absl::StatusOr<v1::RolloutStatus> Status(const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetRolloutRequest req;
    req.set_rollout_id(id);
    v1::RolloutStatus out;
    grpc::Status st = s_->stub().GetRollout(&ctx, req, &out);
    if (!st.ok()) return FromGrpcStatus(st);
    return out;
  }

  pid_t WorkerPidOf(const std::string& id) {
    auto status = Status(id);
    auto workers = s_->Workers();
    if (!status.ok() || !workers.ok()) return -1;
    for (const auto& w : workers->workers()) {
      if (w.worker_id() == status->worker_id()) return static_cast<pid_t>(w.pid());
    }
    return -1;
  }

  std::unique_ptr<SchedulerProcess> s_;
};

TEST_F(ResilienceE2E, TwentyWorkerKillsEveryStreamCompletesWithEachChunkOnce) {
  // Two workers; in every trial the worker running the rollout is SIGKILLed after a different
  // chunk. Quarantine is off here: these kills are the test's, not a crash loop.
  Start(2, {"--quarantine-after", "0", "--respawn-backoff-max-ms", "500"});
  const media::RgbImage image = MakeTestImage(kW, kH, 11);
  constexpr int kFrames = 160;  // 10 chunks of 16
  for (int trial = 0; trial < 20; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    ASSERT_TRUE(s_->WaitForReadyWorkers(1, absl::Seconds(60)).ok());
    const v1::RolloutRequest req =
        MakeWarpRequest(client::TrajectoryPreset::kYaw, kFrames, 40, image, /*seed=*/trial);
    const uint32_t kill_after = 1 + trial % 7;
    std::string id;
    bool killed = false;
    client::RolloutCallbacks cb;
    cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
    cb.on_chunk = [&](const v1::VideoChunk& c) {
      if (killed || c.index() + 1 < kill_after) return;
      const pid_t pid = WorkerPidOf(id);
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
    };
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    client::RolloutResult r = client::RunRollout(s_->stub(), req, cb, &ctx);
    ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
    // RunRollout already rejects gaps, repeats and reordering; check the set explicitly too.
    ASSERT_EQ(r.chunks.size(), 10u);
    for (size_t i = 0; i < r.chunks.size(); ++i) ASSERT_EQ(r.chunks[i].index(), i);
    auto video = media::DecodeVideo(r.video_bytes);
    ASSERT_TRUE(video.ok()) << video.status();
    EXPECT_EQ(static_cast<int>(video->frames.size()), kFrames);
    if (killed) {
      auto status = Status(id);
      ASSERT_TRUE(status.ok());
      EXPECT_GE(status->resumes(), 1u);
    }
  }
}

TEST_F(ResilienceE2E, ReattachAfterDroppedConnectionYieldsTheRestExactlyOnce) {
  Start(1);
  const media::RgbImage image = MakeTestImage(kW, kH, 12);
  v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 320, 40, image);
  req.set_reattach_grace_s(30);
  req.set_client_request_id("reattach-1");

  // First connection: take three chunks, then drop the connection.
  std::string id;
  std::string received;  // init + chunks 0..2
  uint32_t got = 0;
  grpc::ClientContext first;
  client::RolloutCallbacks cb;
  cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
  cb.on_init = [&](const v1::StreamInit& init) { received = init.init_segment(); };
  cb.on_chunk = [&](const v1::VideoChunk& c) {
    if (got == 3) return;
    received += c.data();
    if (++got == 3) first.TryCancel();
  };
  client::RolloutResult dropped = client::RunRollout(s_->stub(), req, cb, &first);
  EXPECT_EQ(dropped.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_EQ(got, 3u);

  // The rollout keeps running without a client.
  auto status = Status(id);
  ASSERT_TRUE(status.ok());
  EXPECT_NE(status->state(), v1::ROLLOUT_STATE_CANCELLED);

  // Re-attach from chunk 3: the rest arrives once, in order, and completes the video.
  grpc::ClientContext second;
  v1::AttachRequest attach;
  attach.set_rollout_id(id);
  attach.set_from_chunk(3);
  auto reader = s_->stub().Attach(&second, attach);
  v1::RolloutEvent e;
  uint32_t next = 3;
  bool existing = false, final_seen = false;
  while (reader->Read(&e)) {
    if (e.has_accepted()) existing = e.accepted().existing();
    if (e.has_chunk()) {
      ASSERT_EQ(e.chunk().index(), next) << "each chunk exactly once, in order";
      ++next;
      received += e.chunk().data();
    }
    if (e.has_final()) final_seen = true;
  }
  grpc::Status end = reader->Finish();
  ASSERT_TRUE(end.ok()) << end.error_message();
  EXPECT_TRUE(existing);
  EXPECT_TRUE(final_seen);
  EXPECT_EQ(next, 20u);
  auto video = media::DecodeVideo(received);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->frames.size(), 320u);

  // A chunk that was never buffered, and an unknown rollout, are precise errors.
  grpc::ClientContext third;
  attach.set_rollout_id("r-does-not-exist");
  auto missing = s_->stub().Attach(&third, attach);
  while (missing->Read(&e)) {}
  EXPECT_EQ(missing->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ResilienceE2E, ResubmitWithTheSameRequestIdJoinsTheSameRollout) {
  Start(1);
  const media::RgbImage image = MakeTestImage(kW, kH, 13);
  v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kPan, 160, 0.5, image);
  req.set_client_request_id("idem-42");
  req.set_tenant("team-a");
  client::RolloutResult a, b;
  std::atomic<bool> first_accepted{false};
  std::thread t([&] {
    client::RolloutCallbacks cb;
    cb.on_accepted = [&](const v1::Accepted&) { first_accepted = true; };
    grpc::ClientContext ctx;
    a = client::RunRollout(s_->stub(), req, cb, &ctx);
  });
  while (!first_accepted) absl::SleepFor(absl::Milliseconds(5));
  grpc::ClientContext ctx;
  b = client::RunRollout(s_->stub(), req, {}, &ctx);
  t.join();
  ASSERT_TRUE(a.ok()) << client::FormatStatus(a.status);
  ASSERT_TRUE(b.ok()) << client::FormatStatus(b.status);
  EXPECT_EQ(a.rollout_id, b.rollout_id);
  EXPECT_EQ(a.chunks.size(), 10u);
  EXPECT_EQ(b.chunks.size(), 10u) << "the joining stream replays from chunk 0";
  EXPECT_EQ(a.video_bytes, b.video_bytes);
  // A third submission after completion still answers with the same rollout.
  grpc::ClientContext ctx3;
  client::RolloutResult c = client::RunRollout(s_->stub(), req, {}, &ctx3);
  ASSERT_TRUE(c.ok()) << client::FormatStatus(c.status);
  EXPECT_EQ(c.rollout_id, a.rollout_id);
}

TEST_F(ResilienceE2E, DeadlinesRejectAtAdmissionAndExpireMidRollout) {
  Start(1);
  const media::RgbImage image = MakeTestImage(kW, kH, 14);
  // Measure the speed once so admission can estimate.
  {
    grpc::ClientContext ctx;
    auto r = client::RunRollout(
        s_->stub(), MakeWarpRequest(client::TrajectoryPreset::kYaw, 64, 20, image), {}, &ctx);
    ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
  }
  // 100k frames cannot be done in 2 s: refused at once, before any work.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    const absl::Time start = absl::Now();
    auto r = client::RunRollout(
        s_->stub(), MakeWarpRequest(client::TrajectoryPreset::kYaw, 4000, 20, image), {}, &ctx);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_THAT(r.status.error_message(), HasSubstr("deadline cannot be met"));
    EXPECT_FALSE(r.accepted);
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
  // The speed was measured at 320x176; a 1280x704 rollout is ~16x slower per frame, so
  // admission's estimate (400 frames, well under 3 s) lets it in, and the deadline passes while
  // it runs: it must end DEADLINE_EXCEEDED promptly and free the worker.
  {
    const v1::RolloutRequest big =
        MakeWarpRequest(client::TrajectoryPreset::kYaw, 400, 20, MakeTestImage(1280, 704, 3));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    std::string id;
    client::RolloutCallbacks cb;
    cb.on_accepted = [&](const v1::Accepted& a) { id = a.rollout_id(); };
    const absl::Time start = absl::Now();
    auto r = client::RunRollout(s_->stub(), big, cb, &ctx);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    ASSERT_FALSE(id.empty()) << "admitted on the (too optimistic) estimate";
    auto status = Status(id);
    ASSERT_TRUE(status.ok());
    EXPECT_EQ(status->state(), v1::ROLLOUT_STATE_FAILED);
    EXPECT_EQ(status->error_code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
    EXPECT_LT(status->frames_done(), 400u);
  }
  // The worker is free again.
  grpc::ClientContext ctx;
  auto r = client::RunRollout(
      s_->stub(), MakeWarpRequest(client::TrajectoryPreset::kPan, 16, 0.1, image), {}, &ctx);
  EXPECT_TRUE(r.ok()) << client::FormatStatus(r.status);
}

TEST_F(ResilienceE2E, TenfoldOverloadRejectsFastWithRetryAfterAndStaysHealthy) {
  // Capacity: 1 running + 2 queued per class. Thirty concurrent submissions = 10x.
  Start(1, {"--max-queue", "2"});
  const media::RgbImage image = MakeTestImage(kW, kH, 15);
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 96, 30, image);
  constexpr int kClients = 30;
  std::vector<client::RolloutResult> results(kClients);
  std::vector<absl::Duration> took(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      const absl::Time start = absl::Now();
      results[i] = client::RunRollout(s_->stub(), req, {}, &ctx);
      took[i] = absl::Now() - start;
    });
  }
  // Health stays responsive while the storm runs.
  auto health = grpc::health::v1::Health::NewStub(client::MakeChannel(s_->address()));
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckResponse resp;
    EXPECT_TRUE(health->Check(&ctx, {}, &resp).ok());
    absl::SleepFor(absl::Milliseconds(50));
  }
  for (auto& t : threads) t.join();
  int ok = 0, rejected = 0;
  for (int i = 0; i < kClients; ++i) {
    if (results[i].ok()) {
      ++ok;
    } else {
      ASSERT_EQ(results[i].status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << client::FormatStatus(results[i].status);
      ++rejected;
      EXPECT_LT(took[i], absl::Seconds(2)) << "a rejection must not wait for capacity";
      auto retry = RetryAfter(results[i].status);
      ASSERT_TRUE(retry.has_value());
      EXPECT_GT(*retry, absl::ZeroDuration());
    }
  }
  EXPECT_GE(ok, 3);
  EXPECT_EQ(ok + rejected, kClients);
  auto metrics = HttpGet(s_->metrics_address(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr(absl::StrCat(
                            "wmserve_admission_rejections_total{reason=\"queue_full\"} ", rejected)));
}

TEST_F(ResilienceE2E, CrashLoopingWorkerIsQuarantined) {
  Start(1, {"--quarantine-after", "2", "--no-worker-timeout-s", "3"});
  for (int kill = 0; kill < 2; ++kill) {
    ASSERT_TRUE(s_->WaitForReadyWorkers(1, absl::Seconds(60)).ok());
    auto workers = s_->Workers();
    ASSERT_TRUE(workers.ok());
    for (const auto& w : workers->workers()) {
      if (w.state() != v1::WORKER_STATE_DEAD) ::kill(static_cast<pid_t>(w.pid()), SIGKILL);
    }
    absl::SleepFor(absl::Milliseconds(300));
  }
  // The respawned process is refused: no worker becomes ready, and work fails UNAVAILABLE.
  EXPECT_FALSE(s_->WaitForReadyWorkers(1, absl::Seconds(3)).ok());
  EXPECT_THAT(s_->Log(), HasSubstr("worker_quarantined"));
  grpc::ClientContext ctx;
  auto r = client::RunRollout(
      s_->stub(),
      MakeWarpRequest(client::TrajectoryPreset::kPan, 16, 0.1, MakeTestImage(kW, kH, 16)), {},
      &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << client::FormatStatus(r.status);
}

TEST_F(ResilienceE2E, ThousandCancelsLeaveNothingRunningAndMemoryAtBaseline) {
  Start(2, {}, "--device cpu --threads 1 --max-concurrent 2");
  const media::RgbImage image = MakeTestImage(64, 64, 17);
  const v1::RolloutRequest req = MakeWarpRequest(client::TrajectoryPreset::kYaw, 400, 30, image);
  auto worker_pids = [&] {
    std::vector<pid_t> pids;
    auto workers = s_->Workers();
    if (workers.ok()) {
      for (const auto& w : workers->workers()) pids.push_back(static_cast<pid_t>(w.pid()));
    }
    return pids;
  };
  // Warm up so allocator pools and caches exist before the baseline is taken.
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext ctx;
    client::RunRollout(s_->stub(), req, {}, &ctx);
  }
  const uint64_t sched_base = RssBytes(s_->pid());
  uint64_t worker_base = 0;
  for (pid_t p : worker_pids()) worker_base += RssBytes(p);

  constexpr int kRollouts = 1000;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i; (i = next++) < kRollouts;) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        const int events_before_cancel = static_cast<int>(rng() % 6);  // 0 = right after Accepted
        const bool use_cancel_rpc = (i % 2) == 0;
        int events = 0;
        client::RolloutCallbacks cb;
        cb.keep_video_bytes = false;
        auto stop = [&](const std::string& id) {
          if (use_cancel_rpc && !id.empty()) {
            grpc::ClientContext c;
            v1::CancelRequest creq;
            creq.set_rollout_id(id);
            v1::CancelResponse cresp;
            s_->stub().Cancel(&c, creq, &cresp);
          } else {
            ctx.TryCancel();  // a client disconnect
          }
        };
        std::string id;
        cb.on_accepted = [&](const v1::Accepted& a) {
          id = a.rollout_id();
          if (events_before_cancel == 0) stop(id);
        };
        cb.on_progress = [&](const v1::Progress&) {
          if (++events == events_before_cancel) stop(id);
        };
        cb.on_chunk = [&](const v1::VideoChunk&) {
          if (++events == events_before_cancel) stop(id);
        };
        client::RunRollout(s_->stub(), req, cb, &ctx);
      }
    });
  }
  for (auto& t : threads) t.join();

  // Nothing left running or queued, on the scheduler or the workers.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  for (;;) {
    auto metrics = HttpGet(s_->metrics_address(), "/metrics");
    auto workers = s_->Workers();
    int running = 0;
    if (workers.ok()) {
      for (const auto& w : workers->workers()) running += static_cast<int>(w.running_rollouts());
    }
    if (metrics.ok() && workers.ok() && running == 0 &&
        metrics->find("wmserve_rollouts_running 0") != std::string::npos &&
        metrics->find("wmserve_rollouts_waiting{priority=\"normal\"} 0") != std::string::npos) {
      break;
    }
    ASSERT_LT(absl::Now(), deadline) << "rollouts still running: " << running;
    absl::SleepFor(absl::Milliseconds(100));
  }
  const uint64_t sched_after = RssBytes(s_->pid());
  uint64_t worker_after = 0;
  for (pid_t p : worker_pids()) worker_after += RssBytes(p);
  // Margins: the scheduler keeps a bounded record of finished rollouts (metadata only, images
  // dropped), and glibc arenas hold some freed memory.
  EXPECT_LT(sched_after, sched_base + (48u << 20))
      << "scheduler RSS " << sched_base << " -> " << sched_after;
  EXPECT_LT(worker_after, worker_base + (96u << 20))
      << "workers RSS " << worker_base << " -> " << worker_after;
}

}  // namespace
}  // namespace wmserve::testing
