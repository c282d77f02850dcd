// Scheduler policy and worker registry: pure logic stepped with a fake clock, no threads.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "scheduler/admission.h"
#include "scheduler/fair_share_policy.h"
#include "scheduler/queue_policy.h"
#include "scheduler/tenant_ledger.h"
#include "scheduler/worker_registry.h"

namespace wmserve::scheduler {
void PrintTo(const Assignment& a, std::ostream* os) { *os << a.rollout_id << "->" << a.worker_id; }
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1'000'000);

QueuedRollout Q(const std::string& id, const std::string& model = "warp") {
  return {id, model, kT0};
}

// FifoPolicy ignores tenant history; an empty ledger stands in for it.
TenantLedger NoHistory() { return TenantLedger(); }

TEST(FifoPolicy, AssignsInArrivalOrderUpToFreeSlots) {
  FifoPolicy policy;
  // Queue: r1 r2 r3; w-1 has 1 slot, w-2 has 1 slot -> r1, r2 start; r3 waits.
  auto plan = policy.Schedule({Q("r1"), Q("r2"), Q("r3")},
                              {{"w-1", {"warp"}, 1}, {"w-2", {"warp"}, 1}}, NoHistory(), kT0);
  EXPECT_THAT(plan, ElementsAre(Assignment{"r1", "w-1"}, Assignment{"r2", "w-2"}));
}

TEST(FifoPolicy, PrefersWorkerWithMostFreeSlots) {
  FifoPolicy policy;
  auto plan = policy.Schedule({Q("r1"), Q("r2"), Q("r3")},
                              {{"w-1", {"warp"}, 1}, {"w-2", {"warp"}, 2}}, NoHistory(), kT0);
  // r1 -> w-2 (2 free), r2 -> w-1 (tie 1:1, first listed), r3 -> w-2.
  EXPECT_THAT(plan, ElementsAre(Assignment{"r1", "w-2"}, Assignment{"r2", "w-1"},
                                Assignment{"r3", "w-2"}));
}

TEST(FifoPolicy, ModelWithoutFreeWorkerDoesNotBlockOtherModels) {
  FifoPolicy policy;
  auto plan = policy.Schedule({Q("r1", "sana-wm"), Q("r2", "warp")},
                              {{"w-1", {"warp"}, 1}}, NoHistory(), kT0);
  EXPECT_THAT(plan, ElementsAre(Assignment{"r2", "w-1"}));
}

TEST(FifoPolicy, NothingFreeMeansEmptyPlan) {
  FifoPolicy policy;
  EXPECT_THAT(policy.Schedule({Q("r1")}, {{"w-1", {"warp"}, 0}}, NoHistory(), kT0), IsEmpty());
  EXPECT_THAT(policy.Schedule({Q("r1")}, {}, NoHistory(), kT0), IsEmpty());
  EXPECT_THAT(policy.Schedule({}, {{"w-1", {"warp"}, 3}}, NoHistory(), kT0), IsEmpty());
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


TEST(WorkerRegistry, FreeMemoryIsBudgetMinusWhatRunningRolloutsWerePromised) {
  WorkerRegistry reg;
  WorkerDescription d = Desc(3);
  d.rollout_memory_bytes = 10'000;
  const std::string id = reg.Add(d, kT0);
  const std::string unreported = reg.Add(Desc(1), kT0);
  auto free_memory = [&](const std::string& worker) -> uint64_t {
    for (const WorkerSlots& s : reg.SchedulableSlots()) {
      if (s.worker_id == worker) return s.free_memory_bytes;
    }
    return 0;
  };
  EXPECT_EQ(free_memory(id), 10'000u);
  EXPECT_EQ(free_memory(unreported), WorkerSlots::kMemoryNotReported);
  reg.AddRollout(id, "r1", 4'000);
  reg.AddRollout(id, "r1", 4'000);  // repeated assignment does not double-count
  reg.AddRollout(id, "r2", 5'000);
  EXPECT_EQ(free_memory(id), 1'000u);
  reg.RemoveRollout(id, "r1");
  EXPECT_EQ(free_memory(id), 5'000u);
  reg.MarkDead(id, "gone", kT0);
  EXPECT_EQ(reg.Find(id)->promised_bytes, 0u);
}

// ---------------------------------------------------------------------------------------------
// Tenant ledger, aging, service cost.
// ---------------------------------------------------------------------------------------------

TEST(TenantLedger, UsageHalvesEveryHalfLifeAndEmptyTenantIsDefault) {
  TenantLedger ledger(absl::Seconds(10));
  ledger.Charge("", 80, kT0);
  struct Case {
    absl::Duration after;
    double usage;
  };
  for (const Case& c : {Case{absl::ZeroDuration(), 80}, Case{absl::Seconds(10), 40},
                        Case{absl::Seconds(20), 20}, Case{absl::Seconds(30), 10}}) {
    SCOPED_TRACE(absl::FormatDuration(c.after));
    EXPECT_NEAR(ledger.Usage("default", kT0 + c.after), c.usage, 1e-9);
    EXPECT_NEAR(ledger.NormalizedUsage("", 4, kT0 + c.after), c.usage / 4, 1e-9);
  }
  // A charge decays what was there before, then adds.
  ledger.Charge("default", 10, kT0 + absl::Seconds(10));
  EXPECT_NEAR(ledger.Usage("default", kT0 + absl::Seconds(10)), 50, 1e-9);
  EXPECT_EQ(ledger.Usage("never-charged", kT0), 0);
}

TEST(TenantLedger, InfiniteHalfLifeIsCumulativeAndClockSteppingBackNeverInflates) {
  TenantLedger forever(absl::InfiniteDuration());
  forever.Charge("a", 5, kT0);
  forever.Charge("a", 5, kT0 + absl::Hours(100));
  EXPECT_EQ(forever.Usage("a", kT0 + absl::Hours(1000)), 10);

  TenantLedger ledger(absl::Seconds(10));
  ledger.Charge("a", 8, kT0 + absl::Seconds(10));
  EXPECT_EQ(ledger.Usage("a", kT0), 8);  // queried "before" the charge: no decay, no growth
  ledger.Charge("a", 2, kT0);            // charged "before" the last charge: just adds
  EXPECT_EQ(ledger.Usage("a", kT0 + absl::Seconds(10)), 10);
  ledger.Charge("a", -5, kT0 + absl::Seconds(10));  // negative costs are ignored
  EXPECT_EQ(ledger.Usage("a", kT0 + absl::Seconds(10)), 10);
}

TEST(TenantLedger, PruneForgetsOnlyTenantsWhoseUsageDecayedBelowThreshold) {
  TenantLedger ledger(absl::Seconds(1));
  ledger.Charge("old", 1, kT0);
  ledger.Charge("recent", 1, kT0 + absl::Seconds(20));
  ledger.Prune(kT0 + absl::Seconds(20), 1e-3);
  EXPECT_EQ(ledger.tenants(), 1u);
  EXPECT_EQ(ledger.Usage("old", kT0 + absl::Seconds(20)), 0);
  EXPECT_EQ(ledger.Usage("recent", kT0 + absl::Seconds(20)), 1);
}

TEST(EffectivePriority, RisesOneClassPerAgingStepCappedAtHigh) {
  const absl::Duration step = absl::Seconds(30);
  struct Case {
    Priority requested;
    absl::Duration waited;
    absl::Duration aging_step;
    Priority effective;
  };
  const Case cases[] = {
      {Priority::kLow, absl::Seconds(29), step, Priority::kLow},
      {Priority::kLow, absl::Seconds(30), step, Priority::kNormal},
      {Priority::kLow, absl::Seconds(59), step, Priority::kNormal},
      {Priority::kLow, absl::Seconds(60), step, Priority::kHigh},
      {Priority::kLow, absl::Hours(10), step, Priority::kHigh},
      {Priority::kNormal, absl::Seconds(30), step, Priority::kHigh},
      {Priority::kHigh, absl::Hours(1), step, Priority::kHigh},
      {Priority::kLow, absl::Hours(1), absl::InfiniteDuration(), Priority::kLow},
      {Priority::kLow, absl::Hours(1), absl::ZeroDuration(), Priority::kLow},
      {Priority::kLow, -absl::Hours(1), step, Priority::kLow},  // enqueued "in the future"
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(PriorityName(c.requested), " waited ",
                              absl::FormatDuration(c.waited), " step ",
                              absl::FormatDuration(c.aging_step)));
    QueuedRollout r = Q("r");
    r.priority = c.requested;
    EXPECT_EQ(EffectivePriority(r, c.aging_step, kT0 + c.waited), c.effective);
  }
}

TEST(ServiceCost, IsFramesWithAFloorOfOne) {
  QueuedRollout r = Q("r");
  EXPECT_EQ(ServiceCost(r), 1);
  r.num_frames = 48;
  EXPECT_EQ(ServiceCost(r), 48);
}

// ---------------------------------------------------------------------------------------------
// FairSharePolicy: one plan at a time.
// ---------------------------------------------------------------------------------------------

QueuedRollout R(const std::string& id, Priority priority, const std::string& tenant = "",
                uint32_t frames = 10) {
  QueuedRollout r = Q(id);
  r.priority = priority;
  r.tenant = tenant;
  r.num_frames = frames;
  return r;
}

std::vector<std::string> StartedIds(const std::vector<Assignment>& plan) {
  std::vector<std::string> ids;
  for (const Assignment& a : plan) ids.push_back(a.rollout_id);
  return ids;
}

TEST(FairSharePolicy, StartOrderFollowsClassThenTenantUsageThenArrival) {
  const absl::Duration aging = absl::Seconds(30);
  struct Case {
    const char* name;
    std::vector<QueuedRollout> queue;  // arrival order
    std::vector<std::pair<std::string, double>> usage;  // ledger charges at kT0
    int slots;
    std::vector<std::string> started;
  };
  QueuedRollout aged_low = R("l-aged", Priority::kLow);
  aged_low.enqueued_at = kT0 - 2 * aging;
  QueuedRollout heavy_a = R("a1", Priority::kNormal, "a");
  heavy_a.tenant_weight = 2;
  const Case cases[] = {
      {"HigherClassesFirstFifoInside",
       {R("l1", Priority::kLow), R("n1", Priority::kNormal), R("h1", Priority::kHigh),
        R("n2", Priority::kNormal), R("h2", Priority::kHigh)},
       {},
       3,
       {"h1", "h2", "n1"}},
      {"LowerClassGetsLeftoverCapacity",
       {R("l1", Priority::kLow), R("h1", Priority::kHigh)},
       {},
       5,
       {"h1", "l1"}},
      {"AgedLowCompetesAsHighAndIsOlder",
       {aged_low, R("h1", Priority::kHigh), R("h2", Priority::kHigh)},
       {},
       2,
       {"l-aged", "h1"}},
      // b starts twice before a: a's 15 frames of history exceed b's 0, then b's 10 planned
      // frames; after b's second start (20) a is lighter. Planned starts count.
      {"LeastUsedTenantFirstCountingThisPlan",
       {R("a1", Priority::kNormal, "a"), R("a2", Priority::kNormal, "a"),
        R("b1", Priority::kNormal, "b"), R("b2", Priority::kNormal, "b")},
       {{"a", 15}},
       3,
       {"b1", "b2", "a1"}},
      // a: 20 / weight 2 = 10 < b: 15 / 1.
      {"UsageIsNormalizedByWeight",
       {R("b1", Priority::kNormal, "b"), heavy_a},
       {{"a", 20}, {"b", 15}},
       1,
       {"a1"}},
      {"EqualUsageGoesToEarlierArrival",
       {R("b1", Priority::kNormal, "b"), R("a1", Priority::kNormal, "a")},
       {},
       1,
       {"b1"}},
      {"UsageNeverOverridesClass",
       {R("n1", Priority::kNormal, "light"), R("h1", Priority::kHigh, "heavy")},
       {{"heavy", 1e6}},
       1,
       {"h1"}},
  };
  FairSharePolicy policy({/*aging_step=*/aging, /*usage_half_life=*/absl::Minutes(5)});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    TenantLedger ledger = policy.NewLedger();
    for (const auto& [tenant, cost] : c.usage) ledger.Charge(tenant, cost, kT0);
    const auto plan = policy.Schedule(c.queue, {{"w-1", {"warp"}, c.slots}}, ledger, kT0);
    EXPECT_EQ(StartedIds(plan), c.started);
  }
}

TEST(FairSharePolicy, RolloutThatFitsNoWorkerDoesNotBlockItsTenantOrClass) {
  FairSharePolicy policy;
  QueuedRollout other_model = R("x1", Priority::kHigh);
  other_model.model = "sana-wm";
  QueuedRollout too_big = R("big", Priority::kHigh);
  too_big.state_bytes = 100;
  const auto plan = policy.Schedule({other_model, too_big, R("h1", Priority::kHigh)},
                                    {{"w-1", {"warp"}, 2, /*free_memory_bytes=*/50}},
                                    policy.NewLedger(), kT0);
  EXPECT_THAT(plan, ElementsAre(Assignment{"h1", "w-1"}));
}

// ---------------------------------------------------------------------------------------------
// Placement (shared by every policy through PlanCapacity).
// ---------------------------------------------------------------------------------------------

constexpr uint64_t kGiB = uint64_t{1} << 30;

TEST(Placement, PrefersResidentModelThenFreeSlotsThenFreeMemory) {
  struct Case {
    const char* name;
    std::vector<WorkerSlots> workers;
    uint64_t state_bytes;
    std::string chosen;  // "" = none fits
  };
  const Case cases[] = {
      {"ResidentModelBeatsMoreSlotsAndMemory",
       {{"w-1", {"warp"}, 4, 100 * kGiB, /*model_loaded=*/false},
        {"w-2", {"warp"}, 1, 2 * kGiB, /*model_loaded=*/true}},
       kGiB,
       "w-2"},
      {"MoreFreeSlotsBeatsMoreMemory",
       {{"w-1", {"warp"}, 2, 64 * kGiB}, {"w-2", {"warp"}, 3, 8 * kGiB}},
       kGiB,
       "w-2"},
      {"MoreFreeMemoryBreaksSlotTie",
       {{"w-1", {"warp"}, 2, 8 * kGiB}, {"w-2", {"warp"}, 2, 16 * kGiB}},
       kGiB,
       "w-2"},
      {"FullTieGoesToFirstListed",
       {{"w-1", {"warp"}, 2, 8 * kGiB}, {"w-2", {"warp"}, 2, 8 * kGiB}},
       kGiB,
       "w-1"},
      {"WorkerWithoutEnoughMemoryIsSkipped",
       {{"w-1", {"warp"}, 4, 2 * kGiB}, {"w-2", {"warp"}, 1, 16 * kGiB}},
       4 * kGiB,
       "w-2"},
      {"ExactFitIsAFit", {{"w-1", {"warp"}, 1, 4 * kGiB}}, 4 * kGiB, "w-1"},
      {"NothingHasTheMemory", {{"w-1", {"warp"}, 4, 2 * kGiB}}, 4 * kGiB, ""},
      {"UnreportedMemoryNeverBlocks",
       {{"w-1", {"warp"}, 1, WorkerSlots::kMemoryNotReported}},
       1024 * kGiB,
       "w-1"},
      {"OtherModelOnly", {{"w-1", {"sana-wm"}, 4, 64 * kGiB}}, 0, ""},
  };
  FifoPolicy fifo;
  FairSharePolicy fair;
  for (const Case& c : cases) {
    for (const QueuePolicy* policy : {static_cast<const QueuePolicy*>(&fifo),
                                      static_cast<const QueuePolicy*>(&fair)}) {
      SCOPED_TRACE(absl::StrCat(c.name, policy == &fifo ? " (fifo)" : " (fair share)"));
      QueuedRollout r = Q("r1");
      r.state_bytes = c.state_bytes;
      const auto plan = policy->Schedule({r}, c.workers, NoHistory(), kT0);
      if (c.chosen.empty()) {
        EXPECT_THAT(plan, IsEmpty());
      } else {
        EXPECT_THAT(plan, ElementsAre(Assignment{"r1", c.chosen}));
      }
    }
  }
}

// Co-batching: a rollout goes where compatible rollouts already run (their batched forward has
// room), the fullest open batch first; incompatible rollouts and non-batching workers still
// spread by free slots.
TEST(Placement, PacksCompatibleRolloutsIntoOpenBatches) {
  auto worker = [](const char* id, int free, std::map<std::string, int> max_batch,
                   std::map<std::string, int> running) {
    WorkerSlots w{id, {"sana-wm", "warp"}, free};
    w.max_batch = std::move(max_batch);
    w.running_by_batch_key = std::move(running);
    return w;
  };
  auto rollout = [](const char* id, const char* key) {
    QueuedRollout r = Q(id);
    r.model = "sana-wm";
    r.batch_key = key;
    return r;
  };
  struct Case {
    const char* name;
    std::vector<WorkerSlots> workers;
    std::vector<QueuedRollout> queue;
    std::vector<Assignment> plan;
  };
  const Case cases[] = {
      {"JoinsTheWorkerRunningItsKeyDespiteFewerSlots",
       {worker("w-1", 3, {{"sana-wm", 4}}, {}), worker("w-2", 1, {{"sana-wm", 4}}, {{"k", 3}})},
       {rollout("r1", "k")},
       {{"r1", "w-2"}}},
      {"FullestOpenBatchFirst",
       {worker("w-1", 2, {{"sana-wm", 4}}, {{"k", 1}}),
        worker("w-2", 2, {{"sana-wm", 4}}, {{"k", 2}})},
       {rollout("r1", "k")},
       {{"r1", "w-2"}}},
      {"AFullBatchIsNoReasonToPack",
       {worker("w-1", 3, {{"sana-wm", 2}}, {{"k", 2}}), worker("w-2", 4, {{"sana-wm", 2}}, {})},
       {rollout("r1", "k")},
       {{"r1", "w-2"}}},
      {"OtherKeysSpread",
       {worker("w-1", 2, {{"sana-wm", 4}}, {{"other", 2}}),
        worker("w-2", 3, {{"sana-wm", 4}}, {})},
       {rollout("r1", "k")},
       {{"r1", "w-2"}}},
      {"WorkerThatDoesNotCoBatchSpreads",
       {worker("w-1", 2, {}, {{"k", 1}}), worker("w-2", 3, {}, {})},
       {rollout("r1", "k")},
       {{"r1", "w-2"}}},
      {"NoKeyNeverPacks",
       {worker("w-1", 2, {{"sana-wm", 4}}, {{"", 1}}), worker("w-2", 3, {{"sana-wm", 4}}, {})},
       {rollout("r1", "")},
       {{"r1", "w-2"}}},
      // Within one plan: the first of a burst spreads (nothing runs yet), the rest follow it.
      {"ABurstPacksBehindItsFirstMember",
       {worker("w-1", 4, {{"sana-wm", 4}}, {}), worker("w-2", 4, {{"sana-wm", 4}}, {})},
       {rollout("r1", "k"), rollout("r2", "k"), rollout("r3", "k"), rollout("r4", "j")},
       {{"r1", "w-1"}, {"r2", "w-1"}, {"r3", "w-1"}, {"r4", "w-2"}}},
  };
  FifoPolicy fifo;
  FairSharePolicy fair;
  for (const Case& c : cases) {
    for (const QueuePolicy* policy : {static_cast<const QueuePolicy*>(&fifo),
                                      static_cast<const QueuePolicy*>(&fair)}) {
      SCOPED_TRACE(absl::StrCat(c.name, policy == &fifo ? " (fifo)" : " (fair share)"));
      EXPECT_EQ(policy->Schedule(c.queue, c.workers, NoHistory(), kT0), c.plan);
    }
  }
}

TEST(WorkerRegistry, TracksRunningRolloutsByBatchKey) {
  WorkerRegistry registry;
  WorkerDescription d;
  d.models = {"sana-wm"};
  d.max_concurrent = 4;
  const std::string id = registry.Add(d, kT0);
  registry.Heartbeat(id, /*ready=*/true, 0, kT0);
  registry.SetMaxBatch(id, "sana-wm", 4);
  registry.AddRollout(id, "r1", 0, "k");
  registry.AddRollout(id, "r2", 0, "k");
  registry.AddRollout(id, "r2", 0, "k");  // repeated: counted once
  registry.AddRollout(id, "r3", 0, "");
  auto slots = registry.SchedulableSlots();
  ASSERT_EQ(slots.size(), 1u);
  EXPECT_EQ(slots[0].max_batch, (std::map<std::string, int>{{"sana-wm", 4}}));
  EXPECT_EQ(slots[0].running_by_batch_key, (std::map<std::string, int>{{"k", 2}}));
  registry.RemoveRollout(id, "r1");
  registry.RemoveRollout(id, "r3");
  EXPECT_EQ(registry.SchedulableSlots()[0].running_by_batch_key,
            (std::map<std::string, int>{{"k", 1}}));
  registry.MarkDead(id, "test", kT0);
  EXPECT_TRUE(registry.Find(id)->running_by_batch_key.empty());
}

TEST(Placement, MemoryPromisedEarlierInThePlanCountsAndSmallerRolloutsStillFit) {
  FifoPolicy fifo;
  FairSharePolicy fair;
  // 10 GiB and 4 slots: 4 + 4 fit, the third 4 GiB does not (2 left), the 1 GiB one does.
  std::vector<QueuedRollout> queue;
  for (const auto& [id, gib] : {std::pair{"r1", 4}, {"r2", 4}, {"r3", 4}, {"r4", 1}}) {
    queue.push_back(Q(id));
    queue.back().state_bytes = gib * kGiB;
  }
  for (const QueuePolicy* policy : {static_cast<const QueuePolicy*>(&fifo),
                                    static_cast<const QueuePolicy*>(&fair)}) {
    SCOPED_TRACE(policy == &fifo ? "fifo" : "fair share");
    EXPECT_THAT(policy->Schedule(queue, {{"w-1", {"warp"}, 4, 10 * kGiB}}, NoHistory(), kT0),
                ElementsAre(Assignment{"r1", "w-1"}, Assignment{"r2", "w-1"},
                            Assignment{"r4", "w-1"}));
  }
}

// ---------------------------------------------------------------------------------------------
// Simulations: a fake cluster stepped with a fake clock, no threads.
// ---------------------------------------------------------------------------------------------

// Workers that run each started rollout for num_frames * per_frame and then free its slot and
// memory. Step() is one scheduling round at now(): release finished rollouts, ask the policy
// for a plan against what is free, start the plan (the rollout leaves the queue and its tenant
// is charged ServiceCost, as the hub does), then check the invariants every policy owes.
class FakeCluster {
 public:
  struct Worker {
    std::string id;
    int max_concurrent = 1;
    uint64_t memory_bytes = WorkerSlots::kMemoryNotReported;
  };
  struct Start {
    QueuedRollout rollout;
    std::string worker_id;
    absl::Time at;
    absl::Duration wait() const { return at - rollout.enqueued_at; }
  };

  FakeCluster(std::vector<Worker> workers, TenantLedger ledger,
              absl::Duration per_frame = absl::Seconds(1))
      : workers_(std::move(workers)),
        running_(workers_.size()),
        ledger_(std::move(ledger)),
        per_frame_(per_frame) {}

  absl::Time now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }

  // Queues `r` now, with a fresh id.
  void Submit(QueuedRollout r) {
    r.rollout_id = absl::StrCat(TenantKey(r.tenant), "-", ++submitted_);
    r.enqueued_at = now_;
    queue_.push_back(std::move(r));
  }
  size_t Queued(const std::string& tenant) const {
    return std::count_if(queue_.begin(), queue_.end(),
                         [&](const QueuedRollout& r) { return TenantKey(r.tenant) == tenant; });
  }
  const std::vector<QueuedRollout>& queue() const { return queue_; }

  // One scheduling round. Returns "" or the first invariant the plan broke.
  std::string Step(const QueuePolicy& policy) {
    for (auto& on_worker : running_) {
      on_worker.erase(std::remove_if(on_worker.begin(), on_worker.end(),
                                     [&](const Running& r) { return r.ends <= now_; }),
                      on_worker.end());
    }
    starts_.clear();
    for (const Assignment& a : policy.Schedule(queue_, Slots(), ledger_, now_)) {
      auto it = std::find_if(queue_.begin(), queue_.end(), [&](const QueuedRollout& r) {
        return r.rollout_id == a.rollout_id;
      });
      if (it == queue_.end()) return absl::StrCat(a.rollout_id, " assigned but not queued");
      const int w = WorkerIndex(a.worker_id);
      if (w < 0) return absl::StrCat(a.rollout_id, " assigned to unknown ", a.worker_id);
      if (it->model != "warp") return absl::StrCat(a.rollout_id, " on a worker without its model");
      running_[w].push_back({now_ + per_frame_ * it->num_frames, it->state_bytes});
      if (static_cast<int>(running_[w].size()) > workers_[w].max_concurrent) {
        return absl::StrCat(a.worker_id, " runs more rollouts than its slots");
      }
      if (workers_[w].memory_bytes != WorkerSlots::kMemoryNotReported &&
          UsedMemory(w) > workers_[w].memory_bytes) {
        return absl::StrCat(a.worker_id, " over-committed: ", UsedMemory(w), " of ",
                            workers_[w].memory_bytes, " bytes promised");
      }
      ledger_.Charge(TenantKey(it->tenant), ServiceCost(*it), now_);
      frames_[TenantKey(it->tenant)] += it->num_frames;
      starts_.push_back({*it, a.worker_id, now_});
      queue_.erase(it);
    }
    // Work conservation: nothing still queued fits the capacity the plan left idle.
    const std::vector<WorkerSlots> left = Slots();
    PlanCapacity idle(left);
    for (const QueuedRollout& r : queue_) {
      if (idle.BestWorker(r) >= 0) return absl::StrCat(r.rollout_id, " left waiting but fits");
    }
    return "";
  }

  // Rollouts the last Step() started.
  const std::vector<Start>& starts() const { return starts_; }
  double frames_started(const std::string& tenant) const {
    auto it = frames_.find(tenant);
    return it == frames_.end() ? 0 : it->second;
  }

 private:
  struct Running {
    absl::Time ends;
    uint64_t state_bytes;
  };
  std::vector<WorkerSlots> Slots() const {
    std::vector<WorkerSlots> slots;
    for (size_t w = 0; w < workers_.size(); ++w) {
      const uint64_t budget = workers_[w].memory_bytes;
      slots.push_back({workers_[w].id, {"warp"},
                       workers_[w].max_concurrent - static_cast<int>(running_[w].size()),
                       budget == WorkerSlots::kMemoryNotReported ? budget
                                                                  : budget - UsedMemory(w)});
    }
    return slots;
  }
  uint64_t UsedMemory(size_t w) const {
    uint64_t used = 0;
    for (const Running& r : running_[w]) used += r.state_bytes;
    return used;
  }
  int WorkerIndex(const std::string& id) const {
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (workers_[w].id == id) return static_cast<int>(w);
    }
    return -1;
  }

  std::vector<Worker> workers_;
  std::vector<std::vector<Running>> running_;  // per worker
  TenantLedger ledger_;
  absl::Duration per_frame_;
  absl::Time now_ = kT0;
  std::vector<QueuedRollout> queue_;
  std::vector<Start> starts_;
  std::map<std::string, double> frames_;
  uint64_t submitted_ = 0;
};

QueuedRollout Work(const std::string& tenant, uint32_t frames,
                   Priority priority = Priority::kNormal, double weight = 1) {
  QueuedRollout r;
  r.model = "warp";
  r.tenant = tenant;
  r.num_frames = frames;
  r.priority = priority;
  r.tenant_weight = weight;
  return r;
}

// Flood and trickle. One worker with S = 4 slots; every rollout is F = 8 frames at 1 s/frame,
// so it runs D = 8 s. Tenant A queues 200 rollouts at t = 0; tenant B, at equal weight and the
// same class, submits one every k = 10 s. The clock steps 1 s.
//
// Bound: every B rollout starts within D = 8 s of submission. Why: B asks for 1 rollout per
// 10 s, 0.8 frames/s, less than half of the 4 frames/s the worker delivers, so A (backlogged)
// always has received more decayed service than B when B's rollout arrives, and the policy
// hands B the next slot that frees. Every rollout running when B arrives started no later, so
// it ends within D; the wait is at most D however many slots there are (more only shortens it).
constexpr int kFloodSlots = 4;
constexpr uint32_t kFloodFrames = 8;
constexpr int kTrickleEvery = 10;
constexpr absl::Duration kFloodRunTime = absl::Seconds(kFloodFrames);

struct FloodResult {
  absl::Duration max_wait_b = absl::ZeroDuration();
  int started_a = 0;
  int started_b = 0;
};

// Runs the flood-and-trickle traffic for 400 s. With `bound`, expects each B wait within it.
FloodResult RunFloodAndTrickle(const QueuePolicy& policy, std::optional<absl::Duration> bound) {
  FakeCluster cluster({{"w-1", kFloodSlots}}, TenantLedger(absl::Minutes(1)));
  for (int i = 0; i < 200; ++i) cluster.Submit(Work("a", kFloodFrames));
  FloodResult result;
  for (int step = 0; step < 400; ++step) {
    if (step % kTrickleEvery == 1) cluster.Submit(Work("b", kFloodFrames));
    const std::string violation = cluster.Step(policy);
    EXPECT_EQ(violation, "") << "step " << step;
    if (!violation.empty()) break;
    for (const FakeCluster::Start& s : cluster.starts()) {
      if (s.rollout.tenant == "a") {
        ++result.started_a;
        continue;
      }
      ++result.started_b;
      result.max_wait_b = std::max(result.max_wait_b, s.wait());
      if (bound) {
        EXPECT_LE(s.wait(), *bound) << "step " << step << " " << s.rollout.rollout_id;
      }
    }
    cluster.Advance(absl::Seconds(1));
  }
  // B rollouts still waiting at the end count with their wait so far.
  for (const QueuedRollout& r : cluster.queue()) {
    if (r.tenant != "b") continue;
    result.max_wait_b = std::max(result.max_wait_b, cluster.now() - r.enqueued_at);
    if (bound) {
      EXPECT_LE(cluster.now() - r.enqueued_at, *bound) << "still queued " << r.rollout_id;
    }
  }
  return result;
}

TEST(FairShareSimulation, TrickleTenantWaitsAtMostOneRolloutDurationWhileAnotherFloods) {
  const FloodResult r = RunFloodAndTrickle(FairSharePolicy(), kFloodRunTime);
  EXPECT_EQ(r.started_b, 40);  // all of them: one per 10 s for 400 s
  EXPECT_LE(r.max_wait_b, kFloodRunTime);
  // The flood is not starved either: the worker stays full (4 slots / 8 s for 400 s = 200).
  EXPECT_GE(r.started_a + r.started_b, 196);
}

TEST(FairShareSimulation, FifoControlLeavesTrickleTenantWaitingBehindTheFlood) {
  // The same traffic under FIFO: B's rollouts queue behind A's 200 (400 s of work), which the
  // fair-share bound rules out. Shows the simulation can tell the two apart.
  const FloodResult r = RunFloodAndTrickle(FifoPolicy(), std::nullopt);
  EXPECT_GT(r.max_wait_b, 10 * kFloodRunTime);
}

// Two tenants, both always backlogged (topped up to 20 queued each step), on 2 workers x 2
// slots for 2000 s. Service is measured in frames started after a 200 s warm-up (the first
// plans split an empty history by arrival order). Fair sharing must split frames by weight
// within 10%, whatever the rollout sizes: the cost is frames, not rollouts.
TEST(FairShareSimulation, BackloggedTenantsShareFramesInProportionToWeight) {
  struct Case {
    const char* name;
    double weight_a, weight_b;
    uint32_t frames_a, frames_b;
    double expected_ratio;  // frames A / frames B
  };
  const Case cases[] = {
      {"EqualWeights", 1, 1, 5, 5, 1.0},
      {"TwoToOne", 2, 1, 5, 5, 2.0},
      {"OneToThree", 1, 3, 5, 5, 1.0 / 3},
      {"TwoToOneWithBiggerRolloutsForA", 2, 1, 10, 4, 2.0},
      {"EqualWeightsUnequalSizes", 1, 1, 12, 3, 1.0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FairSharePolicy policy;
    FakeCluster cluster({{"w-1", 2}, {"w-2", 2}}, policy.NewLedger());
    double warm_a = 0, warm_b = 0;
    for (int step = 0; step < 2000; ++step) {
      while (cluster.Queued("a") < 20) {
        cluster.Submit(Work("a", c.frames_a, Priority::kNormal, c.weight_a));
      }
      while (cluster.Queued("b") < 20) {
        cluster.Submit(Work("b", c.frames_b, Priority::kNormal, c.weight_b));
      }
      ASSERT_EQ(cluster.Step(policy), "") << "step " << step;
      if (step == 199) {
        warm_a = cluster.frames_started("a");
        warm_b = cluster.frames_started("b");
      }
      cluster.Advance(absl::Seconds(1));
    }
    const double a = cluster.frames_started("a") - warm_a;
    const double b = cluster.frames_started("b") - warm_b;
    ASSERT_GT(b, 0);
    EXPECT_NEAR(a / b, c.expected_ratio, 0.1 * c.expected_ratio) << a << " vs " << b << " frames";
  }
}

// High-priority flood and one waiting rollout of a lower class. Tenant "flood" queues 20 kHigh
// rollouts at t = 0 and one more every second, more than the worker's 4 slots / 5 s = 0.8/s, so
// kHigh work never runs out. The lower-class rollout arrives at t = 0 after the first 20.
//
// Bound: it starts within (classes to climb) x aging_step + D, D = 5 s the run time. After that
// many aging steps it competes as kHigh. If it belongs to another tenant, that tenant has no
// usage, so it is first in line; if it belongs to the flood's tenant, it is older than every
// flood rollout still queued (the 20 ahead of it took 25 s < 2 x 20 s). Either way it takes
// the next slot to free, within D.
TEST(FairShareSimulation, AgingStartsLowerClassWithinBoundDuringHighPriorityFlood) {
  const absl::Duration kRun = absl::Seconds(5);
  const absl::Duration kStep = absl::Seconds(20);
  struct Case {
    const char* name;
    Priority priority;
    std::string tenant;
    absl::Duration aging_step;
    std::optional<absl::Duration> bound;  // nullopt: must not start within the 300 s run
  };
  const Case cases[] = {
      {"LowOtherTenant", Priority::kLow, "other", kStep, 2 * kStep + kRun},
      {"LowSameTenant", Priority::kLow, "flood", kStep, 2 * kStep + kRun},
      {"NormalOtherTenant", Priority::kNormal, "other", kStep, kStep + kRun},
      {"LowFastAging", Priority::kLow, "other", absl::Seconds(5), 2 * absl::Seconds(5) + kRun},
      {"NoAgingStarves", Priority::kLow, "other", absl::InfiniteDuration(), std::nullopt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FairSharePolicy policy({/*aging_step=*/c.aging_step, /*usage_half_life=*/absl::Minutes(1)});
    FakeCluster cluster({{"w-1", 4}}, policy.NewLedger());
    for (int i = 0; i < 20; ++i) cluster.Submit(Work("flood", 5, Priority::kHigh));
    cluster.Submit(Work(c.tenant, 5, c.priority));
    const std::string waiting_id = cluster.queue().back().rollout_id;
    std::optional<absl::Duration> waited;
    for (int step = 0; step < 300 && !waited; ++step) {
      cluster.Submit(Work("flood", 5, Priority::kHigh));
      ASSERT_EQ(cluster.Step(policy), "") << "step " << step;
      for (const FakeCluster::Start& s : cluster.starts()) {
        if (s.rollout.rollout_id == waiting_id) waited = s.wait();
      }
      cluster.Advance(absl::Seconds(1));
    }
    if (c.bound) {
      ASSERT_TRUE(waited.has_value()) << "never started";
      EXPECT_LE(*waited, *c.bound);
      // And not before aging lifted it to kHigh: the flood kept kHigh work queued all along.
      EXPECT_GE(*waited, c.priority == Priority::kLow ? 2 * c.aging_step : c.aging_step);
    } else {
      EXPECT_FALSE(waited.has_value()) << "started after " << absl::FormatDuration(*waited);
    }
  }
}

// Without aging, classes are strict: no rollout starts while one of a higher class waits.
TEST(FairShareSimulation, PrioritiesAreStrictWithoutAging) {
  FairSharePolicy policy({/*aging_step=*/absl::InfiniteDuration(),
                          /*usage_half_life=*/absl::Minutes(1)});
  FakeCluster cluster({{"w-1", 3}}, policy.NewLedger());
  int started_below_high = 0;
  for (int step = 0; step < 200; ++step) {
    // Each class arrives at 0.5/s against a capacity of 3 slots / 4 s = 0.75/s: high never
    // saturates the worker, the leftovers go to normal, low gets almost nothing.
    if (step % 2 == 0) cluster.Submit(Work("t1", 4, Priority::kHigh));
    if (step % 2 == 1) cluster.Submit(Work("t2", 4, Priority::kNormal));
    if (step % 2 == 1) cluster.Submit(Work("t3", 4, Priority::kLow));
    ASSERT_EQ(cluster.Step(policy), "") << "step " << step;
    int best_waiting = kNumPriorities;
    for (const QueuedRollout& r : cluster.queue()) {
      best_waiting = std::min(best_waiting, PriorityIndex(r.priority));
    }
    for (const FakeCluster::Start& s : cluster.starts()) {
      if (s.rollout.priority != Priority::kHigh) ++started_below_high;
      EXPECT_LE(PriorityIndex(s.rollout.priority), best_waiting)
          << "step " << step << ": " << s.rollout.rollout_id << " ("
          << PriorityName(s.rollout.priority) << ") started while "
          << PriorityName(static_cast<Priority>(best_waiting)) << " work waits";
    }
    cluster.Advance(absl::Seconds(1));
  }
  EXPECT_GT(started_below_high, 0);  // leftover capacity is used, not idled
}

// Random rollout sizes and memory on two workers of different budgets, with both policies:
// the cluster's per-step checks (slots, memory never over-committed, work conservation) hold at
// every step, and rollouts too big for the small worker go to the big one.
TEST(PlacementSimulation, MemoryIsNeverOverCommitted) {
  FifoPolicy fifo;
  FairSharePolicy fair;
  for (const QueuePolicy* policy : {static_cast<const QueuePolicy*>(&fifo),
                                    static_cast<const QueuePolicy*>(&fair)}) {
    SCOPED_TRACE(policy == &fifo ? "fifo" : "fair share");
    FakeCluster cluster({{"big", 4, 24 * kGiB}, {"small", 4, 12 * kGiB}}, TenantLedger());
    uint64_t seed = 12345;
    auto next = [&](uint64_t n) {  // deterministic LCG: the same sequence on every platform
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      return (seed >> 33) % n;
    };
    int started = 0, heavy = 0;
    for (int step = 0; step < 300; ++step) {
      for (int k = 0; k < 2 && cluster.queue().size() < 60; ++k) {
        QueuedRollout r = Work(absl::StrCat("t", next(3)), static_cast<uint32_t>(2 + next(9)));
        r.state_bytes = (1 + next(16)) * kGiB;  // 1..16 GiB: above 12 only "big" can take it
        cluster.Submit(r);
      }
      ASSERT_EQ(cluster.Step(*policy), "") << "step " << step;
      for (const FakeCluster::Start& s : cluster.starts()) {
        ++started;
        if (s.rollout.state_bytes > 12 * kGiB) {
          EXPECT_EQ(s.worker_id, "big") << "step " << step << " " << s.rollout.rollout_id;
          ++heavy;
        }
      }
      cluster.Advance(absl::Seconds(1));
    }
    EXPECT_GT(started, 100);
    EXPECT_GT(heavy, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Speed estimate and admission.
// ---------------------------------------------------------------------------------------------

TEST(SpeedEstimator, PriorUntilMeasuredThenFirstSampleThenConvergesToNewSpeed) {
  SpeedEstimator speed({/*prior_seconds_per_frame=*/0.5, /*smoothing=*/0.2});
  EXPECT_FALSE(speed.Measured("warp"));
  EXPECT_EQ(speed.SecondsPerFrame("warp"), 0.5);
  EXPECT_EQ(speed.Estimate("warp", 10), absl::Seconds(5));

  speed.Observe("warp", 8, absl::Seconds(8));  // 1 s/frame replaces the prior outright
  EXPECT_TRUE(speed.Measured("warp"));
  EXPECT_DOUBLE_EQ(speed.SecondsPerFrame("warp"), 1.0);
  EXPECT_EQ(speed.SecondsPerFrame("other"), 0.5);

  // The model gets faster: 0.2 s/frame. The error shrinks by (1 - smoothing) per sample.
  double error = 0.8;
  for (int i = 0; i < 40; ++i) {
    speed.Observe("warp", 4, absl::Milliseconds(800));
    const double next = speed.SecondsPerFrame("warp") - 0.2;
    EXPECT_NEAR(next, 0.8 * error, 1e-9) << "sample " << i;
    error = next;
  }
  EXPECT_NEAR(speed.SecondsPerFrame("warp"), 0.2, 1e-3);

  speed.Observe("warp", 0, absl::Seconds(100));  // no frames: ignored
  speed.Observe("warp", 4, -absl::Seconds(1));   // negative time: ignored
  EXPECT_NEAR(speed.SecondsPerFrame("warp"), 0.2, 1e-3);
}

QueuedRollout Candidate(Priority p, uint32_t frames, absl::Duration deadline_in,
                        const std::string& model = "warp") {
  QueuedRollout r = Q("new", model);
  r.priority = p;
  r.num_frames = frames;
  r.deadline =
      deadline_in == absl::InfiniteDuration() ? absl::InfiniteFuture() : kT0 + deadline_in;
  return r;
}

TEST(AdmissionController, ClassBoundsDeadlinesAndEstimates) {
  // warp measured at 0.5 s/frame. Bounds: high 2, normal 3, low 3.
  SpeedEstimator speed({/*prior_seconds_per_frame=*/0.1, /*smoothing=*/0.2});
  speed.Observe("warp", 10, absl::Seconds(5));
  AdmissionController admission({/*max_queued=*/{2, 3, 3}, /*min_retry_after=*/absl::Seconds(1),
                                 /*max_retry_after=*/absl::Minutes(5)});
  const absl::Duration kNone = absl::InfiniteDuration();
  // Waiting now: 1 high, 3 normal (the class is full), 1 low; 100 frames each.
  const std::vector<QueuedRollout> queue = {
      Candidate(Priority::kHigh, 100, kNone), Candidate(Priority::kNormal, 100, kNone),
      Candidate(Priority::kNormal, 100, kNone), Candidate(Priority::kNormal, 100, kNone),
      Candidate(Priority::kLow, 100, kNone)};
  struct Case {
    const char* name;
    QueuedRollout candidate;
    int slots;
    absl::StatusCode code;
    std::string message;  // substring
    absl::Duration wait;  // expected estimated_wait
  };
  const Case cases[] = {
      // Retry: a place frees after the high work (100 frames) and one typical normal rollout
      // (100 frames): 200 frames x 0.5 s / 2 slots = 50 s.
      {"NormalClassFull", Candidate(Priority::kNormal, 10, kNone), 2,
       absl::StatusCode::kResourceExhausted, "priority normal: 3 rollouts waiting (limit 3)",
       absl::Seconds(100)},
      {"HighAdmittedWhileNormalFull", Candidate(Priority::kHigh, 10, kNone), 2,
       absl::StatusCode::kOk, "", absl::Seconds(25)},
      // Ahead: the high one, 100 frames: wait 100 x 0.5 / 2 = 25 s, run 100 x 0.5 = 50 s.
      {"DeadlineInfeasible", Candidate(Priority::kHigh, 100, absl::Seconds(30)), 2,
       absl::StatusCode::kDeadlineExceeded, "estimated completion in 1m15s", absl::Seconds(25)},
      // Same with 90 s. The normal and low work (400 frames) is not ahead of a high rollout.
      {"DeadlineFeasible", Candidate(Priority::kHigh, 100, absl::Seconds(90)), 2,
       absl::StatusCode::kOk, "", absl::Seconds(25)},
      {"DeadlineExactlyMet", Candidate(Priority::kHigh, 100, absl::Seconds(75)), 2,
       absl::StatusCode::kOk, "", absl::Seconds(25)},
      {"MoreSlotsMakeItFeasible", Candidate(Priority::kHigh, 100, absl::Seconds(60)), 10,
       absl::StatusCode::kOk, "", absl::Seconds(5)},
      // Low has everything ahead of it: 500 frames x 0.5 / 2 = 125 s of waiting.
      {"LowHasAllClassesAhead", Candidate(Priority::kLow, 10, absl::Seconds(120)), 2,
       absl::StatusCode::kDeadlineExceeded, "behind 5 queued rollouts on 2 slots",
       absl::Seconds(125)},
      // Other models' queues are not ahead; an unmeasured model runs at the prior 0.1 s/frame.
      {"OtherModelUsesPriorAndOwnQueue",
       Candidate(Priority::kLow, 100, absl::Seconds(11), "sana-wm"), 1, absl::StatusCode::kOk,
       "", absl::ZeroDuration()},
      {"DeadlineAlreadyPassed", Candidate(Priority::kHigh, 1, absl::ZeroDuration()), 2,
       absl::StatusCode::kDeadlineExceeded, "deadline passed", absl::Seconds(25)},
      // No worker ready for the model: nothing to estimate with, so no deadline rejection.
      {"NoServingSlotsNoEstimate", Candidate(Priority::kHigh, 100000, absl::Seconds(1)), 0,
       absl::StatusCode::kOk, "", absl::ZeroDuration()},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const AdmissionDecision d = admission.Decide(c.candidate, queue, speed, c.slots, kT0);
    EXPECT_EQ(d.status.code(), c.code) << d.status;
    EXPECT_THAT(std::string(d.status.message()), ::testing::HasSubstr(c.message));
    EXPECT_EQ(d.admitted(), c.code == absl::StatusCode::kOk);
    EXPECT_EQ(d.estimated_wait, c.wait);
    if (c.code == absl::StatusCode::kResourceExhausted) {
      EXPECT_EQ(d.retry_after, absl::Seconds(50));
      EXPECT_THAT(std::string(d.status.message()), ::testing::HasSubstr("retry after 50s"));
    } else {
      EXPECT_EQ(d.retry_after, absl::ZeroDuration());
    }
  }
}

TEST(AdmissionController, RetryAfterIsClampedAndPositiveEvenWithNoWorker) {
  SpeedEstimator speed({/*prior_seconds_per_frame=*/0.001, /*smoothing=*/0.2});
  AdmissionController admission({/*max_queued=*/{1, 1, 1}, /*min_retry_after=*/absl::Seconds(2),
                                 /*max_retry_after=*/absl::Seconds(30)});
  const std::vector<QueuedRollout> queue = {
      Candidate(Priority::kNormal, 10, absl::InfiniteDuration())};
  struct Case {
    const char* name;
    int slots;
    absl::Duration retry_after;
  };
  for (const Case& c : {Case{"FastModelClampsUpToMinimum", 4, absl::Seconds(2)},
                        Case{"NoWorkerWaitsTheMaximum", 0, absl::Seconds(30)}}) {
    SCOPED_TRACE(c.name);
    const AdmissionDecision d = admission.Decide(
        Candidate(Priority::kNormal, 10, absl::InfiniteDuration()), queue, speed, c.slots, kT0);
    EXPECT_EQ(d.status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(d.retry_after, c.retry_after);
  }
}

}  // namespace
}  // namespace wmserve::scheduler
