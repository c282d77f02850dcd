// Metric conventions: bucket layouts fit seconds-scale video work, and label values are bounded
// whatever callers pass (no request field can create new series).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace wmserve::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

void ExpectIncreasing(const prometheus::Histogram::BucketBoundaries& b) {
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]) << "bucket " << i;
}

TEST(Buckets, SecondsSpanMillisecondsToMinutes) {
  const auto b = SecondsBuckets();
  ExpectIncreasing(b);
  EXPECT_LE(b.front(), 0.01) << "a chunk relay or a fast step must not all land in one bucket";
  EXPECT_GE(b.back(), 300) << "a 60 s video rollout on a slow device takes minutes";
  EXPECT_LE(b.size(), 20u) << "every bucket is a series per label set";
}

TEST(Buckets, StepsResolveSubMillisecond) {
  const auto b = StepBuckets();
  ExpectIncreasing(b);
  EXPECT_LE(b.front(), 0.001);
  EXPECT_GE(b.back(), 10);
}

TEST(Buckets, RealtimeFactorHasABoundaryAtOne) {
  const auto b = RealtimeFactorBuckets();
  ExpectIncreasing(b);
  EXPECT_NE(std::find(b.begin(), b.end(), 1.0), b.end())
      << "'faster than realtime' must be answerable exactly from the buckets";
  EXPECT_LE(b.front(), 0.1);
  EXPECT_GE(b.back(), 50);
}

size_t CountSeries(prometheus::Registry& registry, const std::string& family) {
  size_t n = 0;
  for (const auto& f : registry.Collect()) {
    if (f.name == family) n += f.metric.size();
  }
  return n;
}

TEST(Labels, UnknownValuesCollapseToOther) {
  prometheus::Registry registry;
  SchedulerMetrics s(registry);
  WorkerMetrics w(registry);
  for (int i = 0; i < 500; ++i) {
    const std::string junk = absl::StrCat("r-", i);  // e.g. a rollout id passed by mistake
    s.RolloutEnded("failed", junk);
    s.Rejected(junk);
    s.WorkerRestarted(junk);
    s.SetWorkers(junk, 1);
    s.SetWaiting(junk, 1);
    w.StageTime(junk, 0.1);
    w.DenoiseStep(junk, 0.1);
    w.FramesGenerated(junk, 1);
    w.RolloutEnded(junk);
    w.SetMemory("0", "GPU-x", junk, 1);
  }
  // Each family holds its pre-created series plus one "other" series at most.
  EXPECT_LE(CountSeries(registry, "wmserve_rollouts_total"), 3u);
  EXPECT_LE(CountSeries(registry, "wmserve_admission_rejections_total"), 6u);
  EXPECT_LE(CountSeries(registry, "wmserve_worker_restarts_total"), 3u);
  EXPECT_LE(CountSeries(registry, "wmserve_workers"), 6u);
  EXPECT_LE(CountSeries(registry, "wmserve_rollouts_waiting"), 4u);
  EXPECT_LE(CountSeries(registry, "wmserve_stage_duration_seconds"), 1u);
  EXPECT_LE(CountSeries(registry, "wmserve_frames_generated_total"), 3u);
  EXPECT_LE(CountSeries(registry, "wmserve_worker_rollouts_total"), 4u);
  EXPECT_LE(CountSeries(registry, "wmserve_gpu_memory_bytes"), 1u);
}

TEST(Labels, KnownValuesPassThrough) {
  EXPECT_EQ(Bounded("backbone", {"backbone", "decode"}), "backbone");
  EXPECT_EQ(Bounded("Backbone", {"backbone", "decode"}), "other");
  EXPECT_EQ(Bounded("", {"backbone"}), "other");
}

TEST(Exposition, NamesFollowConventions) {
  auto registry = std::make_shared<prometheus::Registry>();
  SchedulerMetrics s(*registry);
  WorkerMetrics w(*registry);
  AddBuildInfo(*registry, "test", {{"model", "warp"}});
  s.RolloutEnded("succeeded", "completed");
  w.StageTime("backbone", 0.2);
  w.SetMemory("0", "GPU-abc", "allocated", 1024);
  const std::string text = prometheus::TextSerializer().Serialize(registry->Collect());
  for (const auto& family : registry->Collect()) {
    SCOPED_TRACE(family.name);
    EXPECT_EQ(family.name.rfind("wmserve_", 0), 0u);
    if (family.type == prometheus::MetricType::Counter) {
      EXPECT_EQ(family.name.substr(family.name.size() - 6), "_total");
    }
    EXPECT_THAT(family.name, Not(HasSubstr("_milliseconds")));
  }
  EXPECT_THAT(text, HasSubstr("wmserve_gpu_memory_bytes{UUID=\"GPU-abc\",gpu=\"0\",pool=\"allocated\"} 1024"));
  EXPECT_THAT(text, HasSubstr("component=\"test\""));
}

}  // namespace
}  // namespace wmserve::metrics
