// End-to-end rollout benchmark through real processes: wmserve-scheduler + local CPU workers +
// this process as the gRPC client. Reports, per configuration:
//   - frames/s end to end (request sent -> Final received, including H.264 encoding and relay),
//   - chunk relay latency: worker finished encoding a segment -> client received it (same host,
//     same clock), p50 / p99 over all chunks.
//
//   - aggregate frames/s over all rollouts (total frames / wall time), for co-batching.
//
//   rollout_bench [--frames N] [--rollouts R] [--width W --height H] [--quality fast|balanced|high]
//                 [--workers K] [--threads T] [--model M] [--concurrent C] [--max-batch B]
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/rollout_client.h"
#include "client/trajectory_presets.h"
#include "tests/e2e/process_harness.h"
#include "worker/media/image_io.h"

namespace wmserve::testing {
namespace {

struct Args {
  int frames = 160;
  int rollouts = 3;
  int width = 1280;
  int height = 704;
  int workers = 1;
  int threads = 0;
  int frames_per_chunk = 16;
  std::string quality = "fast";
  std::string model = "warp";
  int concurrent = 1;  // rollouts in flight at once (relay throughput)
  int max_batch = 0;   // worker --max-batch (co-batching); 0 = the worker's default
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

int Main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    int n = 0;
    const bool num = absl::SimpleAtoi(v, &n);
    if (k == "--frames" && num) a.frames = n;
    else if (k == "--rollouts" && num) a.rollouts = n;
    else if (k == "--width" && num) a.width = n;
    else if (k == "--height" && num) a.height = n;
    else if (k == "--workers" && num) a.workers = n;
    else if (k == "--threads" && num) a.threads = n;
    else if (k == "--frames-per-chunk" && num) a.frames_per_chunk = n;
    else if (k == "--quality") a.quality = v;
    else if (k == "--model") a.model = v;
    else if (k == "--concurrent" && num) a.concurrent = n;
    else if (k == "--max-batch" && num) a.max_batch = n;
    else {
      std::fprintf(stderr, "rollout_bench: bad argument %s %s\n", k.c_str(), v.c_str());
      return 2;
    }
  }
  SchedulerConfig config;
  config.local_workers = a.workers;
  config.worker_args = absl::StrCat("--device cpu --threads ", a.threads, " --frames-per-chunk ",
                                    a.frames_per_chunk, " --log-level warning --model ", a.model,
                                    " --max-concurrent ", a.concurrent);
  if (a.max_batch > 0) absl::StrAppend(&config.worker_args, " --max-batch ", a.max_batch);
  config.extra_args = {"--log-level", "warning", "--models", a.model};
  auto sched = SchedulerProcess::Start(config);
  if (!sched.ok()) {
    std::fprintf(stderr, "%s\n", sched.status().ToString().c_str());
    return 1;
  }
  if (auto s = (*sched)->WaitForReadyWorkers(a.workers, absl::Seconds(60)); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }

  client::PresetOptions opts;
  opts.frames = a.frames;
  opts.image_width = a.width;
  opts.image_height = a.height;
  opts.degrees = 30;
  auto traj = client::MakePresetTrajectory(client::TrajectoryPreset::kYaw, opts);
  auto png = media::EncodePng(MakeTestImage(a.width, a.height, 1));
  client::RequestOptions ro;
  ro.output.set_width(a.width);
  ro.output.set_height(a.height);
  ro.output.set_quality(a.quality == "high"       ? v1::QUALITY_HIGH
                        : a.quality == "balanced" ? v1::QUALITY_BALANCED
                                                  : v1::QUALITY_FAST);
  auto req = client::BuildRolloutRequestFromImage(a.model, *png, *traj, 1, ro);
  if (!req.ok()) {
    std::fprintf(stderr, "%s\n", req.status().ToString().c_str());
    return 1;
  }

  std::vector<double> relay_ms;
  std::vector<double> fps;
  absl::Mutex mu;
  uint64_t total_chunks = 0, total_bytes = 0, total_frames = 0;
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  const absl::Time bench_start = absl::Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < a.concurrent; ++t) {
    threads.emplace_back([&] {
      for (int r; (r = next++) < a.rollouts;) {
        grpc::ClientContext ctx;
        client::RolloutCallbacks cb;
        cb.keep_video_bytes = false;
        cb.on_chunk = [&](const v1::VideoChunk& c) {
          const double ms = absl::ToDoubleMilliseconds(
              absl::Now() - absl::FromUnixNanos(c.encoded_at_unix_nanos()));
          absl::MutexLock lock(&mu);
          relay_ms.push_back(ms);
          ++total_chunks;
          total_bytes += c.data().size();
        };
        const absl::Time start = absl::Now();
        client::RolloutResult res = client::RunRollout((*sched)->stub(), *req, cb, &ctx);
        const double secs = absl::ToDoubleSeconds(absl::Now() - start);
        if (!res.ok()) {
          std::fprintf(stderr, "rollout failed: %s\n", client::FormatStatus(res.status).c_str());
          failed = true;
          return;
        }
        // The frames the model produced (sana-wm with the refiner: one fewer than the poses).
        const uint32_t frames = res.final.frames_sent();
        absl::MutexLock lock(&mu);
        fps.push_back(frames / secs);
        total_frames += frames;
        std::printf("rollout %d: %u frames %dx%d in %.2f s = %.1f frames/s\n", r, frames,
                    a.width, a.height, secs, frames / secs);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failed) return 1;
  const double wall = absl::ToDoubleSeconds(absl::Now() - bench_start);
  std::printf("relay through the scheduler: %.0f chunks/s, %.1f MB/s (%lu chunks, %.1f MB in "
              "%.2f s, %d in flight, model %s)\n",
              total_chunks / wall, total_bytes / wall / 1e6,
              static_cast<unsigned long>(total_chunks), total_bytes / 1e6, wall, a.concurrent,
              a.model.c_str());
  std::printf("end-to-end frames/s: median %.1f per rollout, %.1f aggregate (%d rollouts, %lu "
              "frames in %.2f s; quality %s, %d worker(s), threads %d, max batch %d)\n",
              Percentile(fps, 0.5), total_frames / wall, a.rollouts,
              static_cast<unsigned long>(total_frames), wall, a.quality.c_str(), a.workers,
              a.threads, a.max_batch);
  std::printf("chunk relay latency (encoded -> client received), %zu chunks: p50 %.2f ms, "
              "p99 %.2f ms, max %.2f ms\n",
              relay_ms.size(), Percentile(relay_ms, 0.5), Percentile(relay_ms, 0.99),
              Percentile(relay_ms, 1.0));
  (void)(*sched)->SignalAndWait(SIGTERM, absl::Seconds(30));
  return 0;
}

}  // namespace
}  // namespace wmserve::testing

int main(int argc, char** argv) { return wmserve::testing::Main(argc, argv); }
