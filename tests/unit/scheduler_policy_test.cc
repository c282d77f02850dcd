// Scheduler policy and worker registry: pure logic stepped with a fake clock, no threads.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "scheduler/queue_policy.h"
#include "scheduler/worker_registry.h"

namespace wmserve::scheduler {
void PrintTo(const Assignment& a, std::ostream* os) { *os << a.rollout_id << "->" << a.worker_id; }
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1'000'000);

QueuedRollout Q(const std::string& id, const std::string& model = "warp") {
  return {id, model, kT0, 0, ""};
}


TEST(FifoPolicy, AssignsInArrivalOrderUpToFreeSlots) {
  FifoPolicy policy;
  // Queue: r1 r2 r3; w-1 has 1 slot, w-2 has 1 slot -> r1, r2 start; r3 waits.
  auto plan = policy.Schedule({Q("r1"), Q("r2"), Q("r3")},
                              {{"w-1", {"warp"}, 1}, {"w-2", {"warp"}, 1}}, kT0);
  EXPECT_THAT(plan, ElementsAre(Assignment{"r1", "w-1"}, Assignment{"r2", "w-2"}));
}

TEST(FifoPolicy, PrefersWorkerWithMostFreeSlots) {
  FifoPolicy policy;
  auto plan = policy.Schedule({Q("r1"), Q("r2"), Q("r3")},
                              {{"w-1", {"warp"}, 1}, {"w-2", {"warp"}, 2}}, kT0);
  // r1 -> w-2 (2 free), r2 -> w-1 (tie 1:1, first listed), r3 -> w-2.
  EXPECT_THAT(plan, ElementsAre(Assignment{"r1", "w-2"}, Assignment{"r2", "w-1"},
                                Assignment{"r3", "w-2"}));
}

TEST(FifoPolicy, ModelWithoutFreeWorkerDoesNotBlockOtherModels) {
  FifoPolicy policy;
  auto plan = policy.Schedule({Q("r1", "sana-wm"), Q("r2", "warp")},
                              {{"w-1", {"warp"}, 1}}, kT0);
  EXPECT_THAT(plan, ElementsAre(Assignment{"r2", "w-1"}));
}

TEST(FifoPolicy, NothingFreeMeansEmptyPlan) {
  FifoPolicy policy;
  EXPECT_THAT(policy.Schedule({Q("r1")}, {{"w-1", {"warp"}, 0}}, kT0), IsEmpty());
  EXPECT_THAT(policy.Schedule({Q("r1")}, {}, kT0), IsEmpty());
  EXPECT_THAT(policy.Schedule({}, {{"w-1", {"warp"}, 3}}, kT0), IsEmpty());
}

TEST(RolloutQueue, BoundedWithPositions) {
  RolloutQueue queue(2);
  ASSERT_TRUE(queue.Push(Q("a")).ok());
  ASSERT_TRUE(queue.Push(Q("b")).ok());
  absl::Status full = queue.Push(Q("c"));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), ::testing::HasSubstr("limit 2"));
  EXPECT_EQ(queue.PositionOf("a"), 0);
  EXPECT_EQ(queue.PositionOf("b"), 1);
  EXPECT_EQ(queue.PositionOf("c"), -1);
  EXPECT_TRUE(queue.Remove("a"));
  EXPECT_FALSE(queue.Remove("a"));
  EXPECT_EQ(queue.PositionOf("b"), 0);
  EXPECT_TRUE(queue.Push(Q("c")).ok());
}

WorkerDescription Desc(int max_concurrent, bool ready = true) {
  WorkerDescription d;
  d.name = "local-0";
  d.device = "cpu";
  d.models = {"warp"};
  d.max_concurrent = max_concurrent;
  d.ready = ready;
  return d;
}

TEST(WorkerRegistry, LoadingWorkerIsNotSchedulableUntilReady) {
  WorkerRegistry reg;
  const std::string id = reg.Add(Desc(1, /*ready=*/false), kT0);
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kLoading);
  EXPECT_THAT(reg.SchedulableSlots(), IsEmpty());
  EXPECT_TRUE(reg.AnyLiveWorkerServes("warp"));
  reg.Heartbeat(id, /*ready=*/true, 0, kT0 + absl::Seconds(1));
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kReady);
  ASSERT_EQ(reg.SchedulableSlots().size(), 1u);
  EXPECT_EQ(reg.SchedulableSlots()[0].free_slots, 1);
}

TEST(WorkerRegistry, BusyWhenFullReadyWhenFreed) {
  WorkerRegistry reg;
  const std::string id = reg.Add(Desc(2), kT0);
  reg.AddRollout(id, "r1");
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kReady);
  reg.AddRollout(id, "r2");
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kBusy);
  EXPECT_THAT(reg.SchedulableSlots(), IsEmpty());
  reg.RemoveRollout(id, "r1");
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kReady);
}

TEST(WorkerRegistry, DeathOrphansRunningRolloutsExactlyOnce) {
  WorkerRegistry reg;
  const std::string id = reg.Add(Desc(2), kT0);
  reg.AddRollout(id, "r1");
  reg.AddRollout(id, "r2");
  EXPECT_THAT(reg.MarkDead(id, "stream broken", kT0), UnorderedElementsAre("r1", "r2"));
  EXPECT_THAT(reg.MarkDead(id, "again", kT0), IsEmpty());
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kDead);
  EXPECT_FALSE(reg.AnyLiveWorkerServes("warp"));
  EXPECT_THAT(reg.SchedulableSlots(), IsEmpty());
  // Heartbeats from a dead worker do not revive it.
  reg.Heartbeat(id, true, 0, kT0 + absl::Seconds(1));
  EXPECT_EQ(reg.Find(id)->state, WorkerState::kDead);
}

TEST(WorkerRegistry, SilentAfterTimeoutAndPrunedAfterRetention) {
  WorkerRegistry reg;
  const std::string a = reg.Add(Desc(1), kT0);
  const std::string b = reg.Add(Desc(1), kT0);
  // Step the fake clock: b keeps heartbeating, a goes quiet.
  for (int s = 1; s <= 5; ++s) reg.Heartbeat(b, true, 0, kT0 + absl::Seconds(s));
  EXPECT_THAT(reg.Silent(kT0 + absl::Seconds(2), absl::Seconds(3)), IsEmpty());
  EXPECT_THAT(reg.Silent(kT0 + absl::Seconds(5), absl::Seconds(3)), ElementsAre(a));
  reg.MarkDead(a, "missed heartbeats", kT0 + absl::Seconds(5));
  EXPECT_THAT(reg.Silent(kT0 + absl::Seconds(5), absl::Seconds(3)), IsEmpty());
  reg.Prune(kT0 + absl::Seconds(10), absl::Seconds(60));
  EXPECT_NE(reg.Find(a), nullptr);
  reg.Prune(kT0 + absl::Seconds(70), absl::Seconds(60));
  EXPECT_EQ(reg.Find(a), nullptr);
  EXPECT_NE(reg.Find(b), nullptr);
}

TEST(WorkerRegistry, IdsAreNeverReused) {
  WorkerRegistry reg;
  const std::string a = reg.Add(Desc(1), kT0);
  reg.MarkDead(a, "x", kT0);
  reg.Prune(kT0 + absl::Hours(1), absl::Seconds(1));
  EXPECT_NE(reg.Add(Desc(1), kT0), a);
}

}  // namespace
}  // namespace wmserve::scheduler
