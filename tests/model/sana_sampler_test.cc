// Tests for the SANA-WM sampling math (worker/models/sana/sampler.h).
//
//  * Schedules: the diffusers FlowMatchEulerDiscreteScheduler semantics (shift at init AND at
//    set_timesteps, sigma_min, appended 0, timesteps = 1000 sigma in float32), checked against
//    values computed by hand (shift composition: shift_a(shift_b(s)) = shift_ab(s)) and against
//    float32/float64 values from an independent Python emulation of the diffusers code path.
//  * The distilled streaming schedule (exact float32 sigmas, integer timesteps that survive the
//    model's timestep truncation).
//  * Euler / CFG / per-frame Euler step math, including the condition frame left untouched.
//  * Frame counts and chunk plans for 25, 49, 241 and 961 pixel frames; error messages.
//  * The softmax KV window rule (sink + latest chunk, never more than 10 latent frames of keys).
//  * The chunk-causal teacher's staggered table (with the reference's float64 truncation).
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/sampler.h"

namespace wmserve::worker::sana {

// gtest printer for FrameRange (found by ADL, so outside the unnamed namespace).
void PrintTo(const FrameRange& r, std::ostream* os) {
  *os << "[" << r.begin << ", " << r.end << ")";
}

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// shift_a(shift_b(s)) == shift_{a*b}(s): the closed form of the double shift.
double Shift(double s, double shift) { return shift * s / (1.0 + (shift - 1.0) * s); }

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

template <typename Fn>
std::string ErrorOf(Fn&& fn) {
  try {
    fn();
  } catch (const InvalidInputError& e) {
    return e.what();
  }
  return "<no InvalidInputError>";
}

// --- schedules -----------------------------------------------------------------------------

TEST(SanaSampler, TrainSigmasAreDiffusersInitTable) {
  const std::vector<float> t = FlowMatchTrainSigmas(9.8);
  ASSERT_EQ(t.size(), 1000u);
  EXPECT_EQ(t.front(), 1.0f);
  // sigma_min = shift(1/1000) = 0.0098 / 1.0088 (float32).
  EXPECT_NEAR(t.back(), 0.0098 / 1.0088, 1e-9);
  EXPECT_EQ(t.back(), 0.009714513085782528f);  // Python emulation of the float32 torch ops
  for (size_t i = 1; i < t.size(); ++i) EXPECT_LT(t[i], t[i - 1]) << i;
  // Shift 1 leaves s = i / 1000 (float32 division).
  const std::vector<float> id = FlowMatchTrainSigmas(1.0);
  EXPECT_EQ(id[0], 1.0f);
  EXPECT_EQ(id[999], 1.0f / 1000.0f);
  EXPECT_EQ(id[500], 500.0f / 1000.0f);
}

TEST(SanaSampler, BidirectionalScheduleShapeAndEnds) {
  const SigmaSchedule s = BidirectionalSchedule();
  ASSERT_EQ(s.num_steps(), 60);
  ASSERT_EQ(s.sigmas.size(), 61u);
  EXPECT_EQ(s.sigmas.front(), 1.0f);
  EXPECT_EQ(s.timesteps.front(), 1000.0f);
  EXPECT_EQ(s.sigmas.back(), 0.0f);  // appended
  for (size_t i = 1; i < s.sigmas.size(); ++i) EXPECT_LT(s.sigmas[i], s.sigmas[i - 1]) << i;
  for (size_t i = 0; i < s.timesteps.size(); ++i) {
    EXPECT_EQ(s.timesteps[i], s.sigmas[i] * 1000.0f) << i;  // float32 product
  }
  // Defaults are the released ones.
  const SigmaSchedule explicit_args = FlowMatchSchedule(60, 9.8);
  EXPECT_EQ(s.sigmas, explicit_args.sigmas);
  EXPECT_EQ(s.timesteps, explicit_args.timesteps);
}

TEST(SanaSampler, BidirectionalScheduleAppliesTheShiftTwice) {
  const SigmaSchedule s = BidirectionalSchedule(60, 9.8);
  // Hand computation. sigma_min = shift(0.001) = 0.0098 / 1.0088 = 0.00971451...; set_timesteps
  // shifts linspace(1, sigma_min) again, so the last non-zero sigma is
  // shift(shift(0.001)) = shift_{9.8^2}(0.001) = 0.09604 / 1.09504 = 0.0877046...
  const double last = 0.09604 / 1.09504;
  EXPECT_NEAR(s.sigmas[59], last, 1e-7);
  EXPECT_NEAR(Shift(Shift(0.001, 9.8), 9.8), last, 1e-15);
  // ... not sigma_min, which a single shift would give.
  EXPECT_GT(s.sigmas[59], 9.0 * (0.0098 / 1.0088));
  // Undoing one shift (the inverse of shift k is shift 1/k) leaves an evenly spaced linspace
  // from 1 down to sigma_min: the init-shifted end points, shifted once more.
  std::vector<double> u;
  for (int i = 0; i < 60; ++i) u.push_back(Shift(s.sigmas[i], 1.0 / 9.8));
  EXPECT_NEAR(u.front(), 1.0, 1e-7);
  EXPECT_NEAR(u.back(), 0.0098 / 1.0088, 1e-8);
  const double step = (u.front() - u.back()) / 59.0;
  for (int i = 0; i + 1 < 60; ++i) EXPECT_NEAR(u[i] - u[i + 1], step, 1e-6) << i;
  // Exact float32 values from a Python emulation of diffusers (float32 init table, float64
  // np.linspace and second shift, float32 cast, float32 timesteps).
  EXPECT_EQ(s.sigmas[1], 0.9982610940933228f);
  EXPECT_EQ(s.sigmas[2], 0.9964681267738342f);
  EXPECT_EQ(s.sigmas[29], 0.9117661714553833f);
  EXPECT_EQ(s.sigmas[58], 0.21058396995067596f);
  EXPECT_EQ(s.sigmas[59], 0.08770456165075302f);
  EXPECT_EQ(s.timesteps[1], 998.2611083984375f);
  EXPECT_EQ(s.timesteps[59], 87.70455932617188f);
  // What the model embeds after `timestep.long()`: 1000, 998, 996, ..., 210, 87.
  EXPECT_EQ(static_cast<int>(s.timesteps[2]), 996);
  EXPECT_EQ(static_cast<int>(s.timesteps[58]), 210);
  EXPECT_EQ(static_cast<int>(s.timesteps[59]), 87);
}

TEST(SanaSampler, SmallSchedulesByHand) {
  // shift 1, 4 steps: sigma_min = 0.001; linspace(1000, 1, 4) = 1000, 667, 334, 1.
  const SigmaSchedule a = FlowMatchSchedule(4, 1.0);
  EXPECT_THAT(a.sigmas, ElementsAre(1.0f, 0.667f, 0.334f, 0.001f, 0.0f));
  EXPECT_THAT(a.timesteps, ElementsAre(1000.0f, 667.0f, 334.0f, 1.0f));
  // shift 3, 2 steps: [1, shift_9(0.001) = 0.009 / 1.008 = 1/112], then 0.
  const SigmaSchedule b = FlowMatchSchedule(2, 3.0);
  ASSERT_EQ(b.sigmas.size(), 3u);
  EXPECT_EQ(b.sigmas[0], 1.0f);
  EXPECT_NEAR(b.sigmas[1], 1.0 / 112.0, 1e-9);
  EXPECT_EQ(b.sigmas[2], 0.0f);
  // One step: np.linspace(a, b, 1) == [a].
  const SigmaSchedule c = FlowMatchSchedule(1, 9.8);
  EXPECT_THAT(c.sigmas, ElementsAre(1.0f, 0.0f));
  EXPECT_THAT(c.timesteps, ElementsAre(1000.0f));
}

TEST(SanaSampler, ScheduleArgumentErrors) {
  EXPECT_THAT(ErrorOf([] { FlowMatchSchedule(0, 9.8); }), HasSubstr("steps must be >= 1, got 0"));
  EXPECT_THAT(ErrorOf([] { FlowMatchSchedule(60, 0.0); }), HasSubstr("shift must be positive"));
  EXPECT_THAT(ErrorOf([] { FlowMatchSchedule(60, std::nan("")); }), HasSubstr("shift"));
}

TEST(SanaSampler, StreamingSchedule) {
  const SigmaSchedule s = StreamingSchedule();
  EXPECT_THAT(s.sigmas, ElementsAre(1.0f, 0.96f, 0.889f, 0.727f, 0.0f));
  EXPECT_THAT(s.timesteps, ElementsAre(1000.0f, 960.0f, 889.0f, 727.0f));
  // The float32 products land exactly on the integers, so the model's truncation keeps them.
  for (size_t i = 0; i < s.timesteps.size(); ++i) {
    EXPECT_EQ(static_cast<int>(s.timesteps[i]), kStreamingDenoisingStepList[i]);
  }
  // The distillation configs' list works the same way.
  const SigmaSchedule t = ScheduleFromStepList({1000, 967, 908, 764, 0});
  EXPECT_THAT(t.sigmas, ElementsAre(1.0f, 0.967f, 0.908f, 0.764f, 0.0f));
  EXPECT_THAT(t.timesteps, ElementsAre(1000.0f, 967.0f, 908.0f, 764.0f));
}

TEST(SanaSampler, StepListErrors) {
  EXPECT_THAT(ErrorOf([] { ScheduleFromStepList({1000}); }), HasSubstr("at least 2 entries"));
  EXPECT_THAT(ErrorOf([] {
                ScheduleFromStepList({1000, 500});
              }),
              HasSubstr("[1000, 500] must end with 0"));
  EXPECT_THAT(ErrorOf([] { ScheduleFromStepList({1000, 1200, 0}); }), HasSubstr("(0, 1000]"));
  EXPECT_THAT(ErrorOf([] {
                ScheduleFromStepList({500, 700, 0});
              }),
              HasSubstr("strictly decreasing"));
  EXPECT_THAT(ErrorOf([] { ScheduleFromStepList({0, 0}); }), HasSubstr("(0, 1000]"));
}

TEST(SanaSampler, ScheduleTensors) {
  const SigmaSchedule s = StreamingSchedule();
  const at::Tensor sig = s.SigmasTensor();
  ASSERT_EQ(sig.scalar_type(), at::kFloat);
  ASSERT_EQ(sig.numel(), 5);
  EXPECT_EQ(sig[2].item<float>(), 0.889f);
  const at::Tensor ts = s.TimestepsTensor();
  ASSERT_EQ(ts.numel(), 4);
  EXPECT_EQ(ts[3].item<float>(), 727.0f);
}

// --- step math -----------------------------------------------------------------------------

TEST(SanaSampler, EulerStepMath) {
  const at::Tensor x = at::full({2, 3}, 1.0);
  const at::Tensor v = at::full({2, 3}, 2.0);
  // 1 + (0.25 - 0.5) * 2 = 0.5
  EXPECT_EQ(MaxAbsDiff(EulerStep(x, v, 0.5, 0.25), at::full({2, 3}, 0.5)), 0.0);
  // dtype of x is kept; math in float32.
  const at::Tensor xb = x.to(at::kBFloat16);
  const at::Tensor out = EulerStep(xb, v.to(at::kBFloat16), 0.5, 0.25);
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(MaxAbsDiff(out, at::full({2, 3}, 0.5)), 0.0);

  // Flow matching: x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0. Every Euler step along
  // the straight path is exact, so the whole bidirectional schedule lands on x0.
  const at::Tensor x0 = at::randn({1, 4, 3, 2, 2});
  const at::Tensor eps = at::randn({1, 4, 3, 2, 2});
  const SigmaSchedule s = BidirectionalSchedule();
  at::Tensor xt = eps.clone();
  for (int64_t i = 0; i < s.num_steps(); ++i) {
    xt = EulerStep(xt, eps - x0, s.sigmas[i], s.sigmas[i + 1]);
  }
  EXPECT_LT(MaxAbsDiff(xt, x0), 2e-5);
  // One step from sigma 1 to 0 is x0 directly.
  EXPECT_LT(MaxAbsDiff(EulerStep(eps, eps - x0, 1.0, 0.0), x0), 1e-6);
}

TEST(SanaSampler, CfgMath) {
  const at::Tensor u = at::randn({1, 4, 3, 2, 2});
  const at::Tensor c = at::randn({1, 4, 3, 2, 2});
  EXPECT_LT(MaxAbsDiff(CfgCombine(u, c, 1.0), c), 1e-6);
  EXPECT_EQ(MaxAbsDiff(CfgCombine(u, c, 0.0), u), 0.0);
  EXPECT_LT(MaxAbsDiff(CfgCombine(u, c, 5.0), u.to(at::kDouble) * -4.0 + c.to(at::kDouble) * 5.0),
            1e-5);
  // Batched [uncond; cond] -> one sample.
  const at::Tensor batched = at::cat({u, c}, 0);
  const at::Tensor g = CfgCombineBatched(batched, kBidirectionalCfgScale);
  ASSERT_EQ(g.size(0), 1);
  EXPECT_EQ(MaxAbsDiff(g, CfgCombine(u, c, 5.0)), 0.0);
  EXPECT_THAT(ErrorOf([&] { CfgCombine(u, c.narrow(2, 0, 2), 5.0); }), HasSubstr("differ"));
  EXPECT_THAT(ErrorOf([&] { CfgCombineBatched(at::randn({3, 2}), 5.0); }), HasSubstr("even size"));
}

TEST(SanaSampler, PerFrameStepKeepsTheConditionFrame) {
  const SigmaSchedule s = StreamingSchedule();
  const at::Tensor x = at::randn({1, 4, 4, 2, 3});
  at::Tensor v = at::randn({1, 4, 4, 2, 3});
  v.select(2, 0).fill_(std::numeric_limits<float>::quiet_NaN());   // must not leak into frame 0
  const at::Tensor t = FrameTimesteps(1, {0, 4}, s.timesteps[0]);  // [0, 1000, 1000, 1000]
  const at::Tensor out = PerFrameEulerStep(x, v, t, s);
  EXPECT_TRUE(out.select(2, 0).equal(x.select(2, 0)));
  // Frames 1..3: sigma 1.0 -> 0.96.
  const at::Tensor ref = EulerStep(x.narrow(2, 1, 3), v.narrow(2, 1, 3), 1.0, 0.96);
  EXPECT_LT(MaxAbsDiff(out.narrow(2, 1, 3), ref), 1e-6);
}

TEST(SanaSampler, PerFrameStepPicksEachFramesNextSigma) {
  // Chunk-causal teacher situation: frames at different points of the schedule.
  const SigmaSchedule s = StreamingSchedule();
  const at::Tensor x = at::zeros({2, 1, 5, 1, 1});
  const at::Tensor v = at::full({2, 1, 5, 1, 1}, 1.0);
  const at::Tensor t = at::tensor(std::vector<float>{0.0f, 960.0f, 889.0f, 1000.0f, 727.0f});
  const at::Tensor out = PerFrameEulerStep(x, v, t, s);  // (T) shared by the batch
  // x + (next - sigma) * 1 for sigma 0, 0.96, 0.889, 1.0, 0.727.
  const std::vector<float> want = {0.0f, 0.889f - 0.96f, 0.727f - 0.889f, 0.96f - 1.0f,
                                   0.0f - 0.727f};
  for (int b = 0; b < 2; ++b) {
    for (int f = 0; f < 5; ++f) {
      EXPECT_NEAR(out[b][0][f][0][0].item<float>(), want[static_cast<size_t>(f)], 1e-6)
          << "b " << b << " f " << f;
    }
  }
  // (B, 1, T) and (B, T) layouts agree.
  const at::Tensor tb = t.view({1, 1, 5}).expand({2, 1, 5});
  EXPECT_TRUE(PerFrameEulerStep(x, v, tb, s).equal(out));
  EXPECT_TRUE(PerFrameEulerStep(x, v, tb.squeeze(1), s).equal(out));
}

TEST(SanaSampler, PerFrameStepMatchesTheScalarStepAlongTheBidirectionalSchedule) {
  const SigmaSchedule s = BidirectionalSchedule();
  const at::Tensor x = at::randn({1, 3, 3, 2, 2});
  const at::Tensor v = at::randn({1, 3, 3, 2, 2});
  for (int64_t i = 0; i < s.num_steps(); ++i) {
    const at::Tensor t = FrameTimesteps(1, {0, 3}, s.timesteps[static_cast<size_t>(i)]);
    const at::Tensor out = PerFrameEulerStep(x, v, t, s);
    const at::Tensor ref =
        EulerStep(x, v, s.sigmas[static_cast<size_t>(i)], s.sigmas[static_cast<size_t>(i) + 1]);
    // sigma = t / 1000 differs from sigmas[i] by float32 rounding only.
    EXPECT_LT(MaxAbsDiff(out.narrow(2, 1, 2), ref.narrow(2, 1, 2)), 2e-6) << "step " << i;
    EXPECT_TRUE(out.select(2, 0).equal(x.select(2, 0)));
  }
}

TEST(SanaSampler, PerFrameStepShapeErrors) {
  const SigmaSchedule s = StreamingSchedule();
  const at::Tensor x = at::zeros({1, 2, 4, 1, 1});
  EXPECT_THAT(ErrorOf([&] {
                PerFrameEulerStep(x, x, at::zeros({1, 1, 3}), s);
              }),
              HasSubstr("do not match"));
  EXPECT_THAT(ErrorOf([&] { PerFrameEulerStep(x.squeeze(), x.squeeze(), at::zeros({4}), s); }),
              HasSubstr("(B, C, T, H, W)"));
}

// --- frame counts and chunk plans ----------------------------------------------------------

TEST(SanaSampler, LatentFrameCounts) {
  EXPECT_EQ(LatentFramesForPixelFrames(1), 1);
  EXPECT_EQ(LatentFramesForPixelFrames(25), 4);
  EXPECT_EQ(LatentFramesForPixelFrames(49), 7);
  EXPECT_EQ(LatentFramesForPixelFrames(161), 21);
  EXPECT_EQ(LatentFramesForPixelFrames(241), 31);
  EXPECT_EQ(LatentFramesForPixelFrames(961), 121);
  EXPECT_EQ(PixelFramesForLatentFrames(121), 961);
  EXPECT_EQ(PixelFramesForLatentFrames(1), 1);
  EXPECT_THAT(ErrorOf([] { LatentFramesForPixelFrames(50); }),
              HasSubstr("50 pixel frames is not 8k+1 (1, 9, 17, 25, ...)"));
  EXPECT_THAT(ErrorOf([] { LatentFramesForPixelFrames(0); }), HasSubstr("0 pixel frames"));
  EXPECT_THAT(ErrorOf([] { PixelFramesForLatentFrames(0); }), HasSubstr("latent_frames >= 1"));
}

std::vector<FrameRange> PlanForPixelFrames(int64_t pixel_frames) {
  return StreamingChunkPlan(LatentFramesForPixelFrames(pixel_frames));
}

void ExpectWellFormedPlan(const std::vector<FrameRange>& plan, int64_t latent_frames) {
  ASSERT_FALSE(plan.empty());
  EXPECT_EQ(plan.front(), (FrameRange{0, 4}));
  for (size_t i = 1; i < plan.size(); ++i) {
    EXPECT_EQ(plan[i].begin, plan[i - 1].end) << i;
    EXPECT_EQ(plan[i].size(), 3) << i;
  }
  EXPECT_EQ(plan.back().end, latent_frames);
}

TEST(SanaSampler, StreamingChunkPlans) {
  // 25 pixel frames -> 4 latent -> one chunk (the condition frame + 3).
  EXPECT_THAT(PlanForPixelFrames(25), ElementsAre(FrameRange{0, 4}));
  // 49 -> 7 -> [0, 4), [4, 7).
  EXPECT_THAT(PlanForPixelFrames(49), ElementsAre(FrameRange{0, 4}, FrameRange{4, 7}));
  // 241 (15 s) -> 31 -> 10 chunks.
  const auto p241 = PlanForPixelFrames(241);
  ASSERT_EQ(p241.size(), 10u);
  ExpectWellFormedPlan(p241, 31);
  EXPECT_EQ(p241[1], (FrameRange{4, 7}));
  EXPECT_EQ(p241.back(), (FrameRange{28, 31}));
  // 961 (60 s) -> 121 -> 40 chunks.
  const auto p961 = PlanForPixelFrames(961);
  ASSERT_EQ(p961.size(), 40u);
  ExpectWellFormedPlan(p961, 121);
  EXPECT_EQ(p961[39], (FrameRange{118, 121}));
}

TEST(SanaSampler, StreamingChunkPlanErrors) {
  const std::string e50 = ErrorOf([] { StreamingChunkPlan(50); });
  EXPECT_THAT(e50, HasSubstr("StreamingChunkPlan: 50 latent frames is not 3k+1 with k >= 1 "
                             "(4, 7, 10, ...)"));
  EXPECT_THAT(e50, HasSubstr("pixel frames must be 24k+1 (25, 49, 73, ...)"));
  EXPECT_THAT(ErrorOf([] { StreamingChunkPlan(1); }), HasSubstr("1 latent frames is not 3k+1"));
  EXPECT_THAT(ErrorOf([] { StreamingChunkPlan(3); }), HasSubstr("3 latent frames"));
  EXPECT_THAT(ErrorOf([] { StreamingChunkPlan(0); }), HasSubstr("0 latent frames"));
  EXPECT_THAT(ErrorOf([] { StreamingChunkPlan(-2); }), HasSubstr("-2 latent frames"));
  // 161 pixel frames are a valid bidirectional count (21 latent) but not a streaming one.
  EXPECT_THAT(ErrorOf([] { PlanForPixelFrames(161); }), HasSubstr("21 latent frames"));
  EXPECT_THAT(ErrorOf([] { StreamingChunkPlan(7, 0); }), HasSubstr("chunk_frames must be >= 1"));
  // Another base: 2k+1.
  EXPECT_THAT(StreamingChunkPlan(5, 2), ElementsAre(FrameRange{0, 3}, FrameRange{3, 5}));
}

// --- per-frame timesteps -------------------------------------------------------------------

TEST(SanaSampler, FrameTimesteps) {
  const at::Tensor first = FrameTimesteps(2, {0, 4}, 960.0);
  ASSERT_EQ(first.sizes(), (std::vector<int64_t>{2, 1, 4}));
  EXPECT_EQ(first.scalar_type(), at::kFloat);
  for (int b = 0; b < 2; ++b) {
    EXPECT_THAT(
        std::vector<float>(first[b][0].data_ptr<float>(), first[b][0].data_ptr<float>() + 4),
        ElementsAre(0.0f, 960.0f, 960.0f, 960.0f));
  }
  // Later chunks hold no condition frame.
  const at::Tensor later = FrameTimesteps(1, {4, 7}, 889.0);
  EXPECT_TRUE(later.equal(at::full({1, 1, 3}, 889.0f)));
  // KV-save pass: the clean chunk at t = 0.
  EXPECT_TRUE(FrameTimesteps(1, {0, 4}, 0.0).equal(at::zeros({1, 1, 4})));
  // No condition frames (e.g. a refiner-style call) and a custom set.
  EXPECT_TRUE(FrameTimesteps(1, {0, 4}, 5.0, {}).equal(at::full({1, 1, 4}, 5.0f)));
  EXPECT_EQ(FrameTimesteps(1, {4, 7}, 5.0, {0, 5})[0][0][1].item<float>(), 0.0f);
  // Fractional scheduler timesteps are kept as float32 (the model truncates them).
  EXPECT_EQ(FrameTimesteps(1, {0, 2}, 998.2611083984375)[0][0][1].item<float>(),
            998.2611083984375f);
  EXPECT_THAT(ErrorOf([] { FrameTimesteps(0, {0, 4}, 1.0); }), HasSubstr("batch"));
  EXPECT_THAT(ErrorOf([] { FrameTimesteps(1, {4, 4}, 1.0); }), HasSubstr("bad frame range"));
  EXPECT_THAT(ErrorOf([] { FrameTimesteps(1, {0, 4}, -1.0); }), HasSubstr("timestep"));
}

// --- KV window -----------------------------------------------------------------------------

TEST(SanaSampler, KvWindowChunks) {
  EXPECT_TRUE(CachedChunksFor(0).empty());
  EXPECT_THAT(CachedChunksFor(1), ElementsAre(0));
  EXPECT_THAT(CachedChunksFor(2), ElementsAre(0, 1));
  EXPECT_THAT(CachedChunksFor(3), ElementsAre(0, 2));  // sink + latest
  EXPECT_THAT(CachedChunksFor(39), ElementsAre(0, 38));
  // Without the sink: the latest num_cached_blocks chunks.
  const KvWindowRule no_sink{2, false};
  EXPECT_THAT(CachedChunksFor(1, no_sink), ElementsAre(0));
  EXPECT_THAT(CachedChunksFor(5, no_sink), ElementsAre(3, 4));
  // num_cached_blocks <= 0: everything.
  EXPECT_THAT(CachedChunksFor(4, KvWindowRule{0, true}), ElementsAre(0, 1, 2, 3));
  // A wider window with sink: chunk 0 + the latest 2.
  EXPECT_THAT(CachedChunksFor(6, KvWindowRule{3, true}), ElementsAre(0, 4, 5));
  EXPECT_THAT(ErrorOf([] { CachedChunksFor(-1); }), HasSubstr("chunk must be >= 0"));
}

TEST(SanaSampler, KvWindowFrames) {
  const auto plan = StreamingChunkPlan(121);
  // Chunk 5 = [16, 19): cached = sink [0, 4) + chunk 4 = [13, 16).
  EXPECT_THAT(CachedFramesFor(plan, 5), ElementsAre(0, 1, 2, 3, 13, 14, 15));
  EXPECT_THAT(CachedFramesFor(plan, 5, KvWindowRule{2, false}),
              ElementsAre(10, 11, 12, 13, 14, 15));
  EXPECT_TRUE(CachedFramesFor(plan, 0).empty());
  EXPECT_THAT(ErrorOf([&] { CachedFramesFor(plan, 41); }), HasSubstr("outside a plan of 40"));
}

TEST(SanaSampler, KvWindowNeverExceedsTenLatentFrames) {
  for (int64_t latent = 4; latent <= 400; latent += 3) {
    const auto plan = StreamingChunkPlan(latent);
    const int64_t k = static_cast<int64_t>(plan.size());
    for (int64_t i = 0; i < k; ++i) {
      const auto cached = CachedFramesFor(plan, i);
      EXPECT_LE(static_cast<int64_t>(cached.size()) + plan[static_cast<size_t>(i)].size(),
                kStreamingMaxKeyFrames)
          << "latent " << latent << " chunk " << i;
    }
    const int64_t want = k == 1 ? 4 : k == 2 ? 7 : 10;
    EXPECT_EQ(MaxKeyWindowFrames(plan), want) << latent;
  }
  // 60 s: 10 latent frames = 8,800 keys at 880 tokens per frame.
  EXPECT_EQ(MaxKeyWindowFrames(StreamingChunkPlan(121)) * 880, 8800);
  // Without the sink the window is the last 2 chunks + the current one.
  EXPECT_EQ(MaxKeyWindowFrames(StreamingChunkPlan(121), KvWindowRule{2, false}), 10);
  EXPECT_EQ(MaxKeyWindowFrames(StreamingChunkPlan(121), KvWindowRule{0, true}), 121);
}

TEST(SanaSampler, KvCachedFramesAfterEachChunk) {
  const auto plan = StreamingChunkPlan(121);
  const auto after = CachedFramesAfterEachChunk(plan);
  ASSERT_EQ(after.size(), plan.size());
  EXPECT_THAT(after[0], ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(after[1], ElementsAre(0, 1, 2, 3, 4, 5, 6));
  EXPECT_THAT(after[2], ElementsAre(0, 1, 2, 3, 7, 8, 9));
  EXPECT_THAT(after[39], ElementsAre(0, 1, 2, 3, 118, 119, 120));
  std::set<int64_t> evicted;
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i], CachedFramesFor(plan, static_cast<int64_t>(i) + 1)) << i;
    EXPECT_LE(static_cast<int64_t>(after[i].size()), 7) << i;  // + 3 current = 10
    // The sink never leaves; an evicted frame never comes back; the latest chunk stays.
    for (int64_t f = 0; f < 4; ++f) EXPECT_TRUE(std::count(after[i].begin(), after[i].end(), f));
    for (int64_t f : after[i]) EXPECT_EQ(evicted.count(f), 0u) << "frame " << f << " chunk " << i;
    for (int64_t f = plan[i].begin; f < plan[i].end; ++f) {
      EXPECT_TRUE(std::count(after[i].begin(), after[i].end(), f)) << f;
    }
    if (i + 1 < after.size()) {
      for (int64_t f : after[i]) {
        if (!std::count(after[i + 1].begin(), after[i + 1].end(), f)) evicted.insert(f);
      }
    }
  }
  EXPECT_EQ(evicted.size(), 121u - 4u - 3u);
}

// --- chunk-causal teacher ------------------------------------------------------------------

TEST(SanaSampler, ChunkCausalTeacherTable) {
  const SigmaSchedule s = BidirectionalSchedule();
  const ChunkCausalTeacherTable t = ChunkCausalTeacherSchedule(s, 3);  // k = 1/3
  EXPECT_THAT(t.chunk_start_steps, ElementsAre(0, 20, 40));
  EXPECT_EQ(t.total_steps, 100);
  ASSERT_EQ(t.timesteps.size(), 3u);
  EXPECT_EQ(t.timesteps[0][0], 1000.0f);
  EXPECT_EQ(t.timesteps[0][59], s.timesteps[59]);
  EXPECT_EQ(t.timesteps[0][60], 0.0f);   // finished: clean context
  EXPECT_EQ(t.timesteps[1][19], -1.0f);  // not started
  EXPECT_EQ(t.timesteps[1][20], 1000.0f);
  EXPECT_EQ(t.timesteps[2][99], s.timesteps[59]);
  EXPECT_EQ(t.ActiveChunks(0), 1);
  EXPECT_EQ(t.ActiveChunks(19), 1);
  EXPECT_EQ(t.ActiveChunks(20), 2);
  EXPECT_EQ(t.ActiveChunks(99), 3);
  EXPECT_EQ(t.ActiveChunks(100), 0);
  // Python's int(i * (1/6) * 60) truncates 49.99999999999999 to 49.
  EXPECT_THAT(ChunkCausalTeacherSchedule(s, 6).chunk_start_steps,
              ElementsAre(0, 10, 20, 30, 40, 49));
  EXPECT_EQ(ChunkCausalTeacherSchedule(s, 6).total_steps, 109);
  // 60 s: 40 chunks; the last starts at int(39 * 0.025 * 60) = 58.
  EXPECT_EQ(ChunkCausalTeacherSchedule(s, 40).chunk_start_steps.back(), 58);
  EXPECT_THAT(ChunkCausalTeacherSchedule(s, 2, 0.5).chunk_start_steps, ElementsAre(0, 30));
  EXPECT_THAT(ErrorOf([&] { ChunkCausalTeacherSchedule(s, 0); }), HasSubstr("num_chunks"));
  EXPECT_THAT(ErrorOf([&] { ChunkCausalTeacherSchedule(s, 2, 0.0); }), HasSubstr("interval_k"));
}

}  // namespace
}  // namespace wmserve::worker::sana
