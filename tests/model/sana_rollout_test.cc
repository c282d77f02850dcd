// Tests for the chunk-causal / streaming forward (SanaTransformer::ForwardChunk,
// ForwardChunkCausal) and the Stage-1 rollouts (worker/models/sana/rollout.h).
//
//  * Invariant: ForwardChunk chunk by chunk with the carried SanaStreamingCache == the
//    whole-sequence ForwardChunkCausal on the same inputs (per-chunk timesteps), for the tiny
//    golden weights (skipped without ../shared/golden/sana-wm-tiny) and for random weights, with
//    the streaming and the bidirectional semantics options and with the teacher window.
//  * Read-only passes leave the cache bit-identical; the window holds sink + latest chunk.
//  * StreamingRollout: seeds, cache_bytes constant after warm-up, condition frame, cancellation.
//  * BidirectionalRollout: runs, CFG scale 1 == no CFG, cancellation.
//  * Co-batching: batched chunks of rollouts at different offsets == solo chunks; shape classes;
//    a cancelled member leaves within one step; StreamingBatcher lockstep batches and cancel.
#include "tests/model/model_test_util.h"
#include "worker/models/sana/rollout.h"

#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn_like.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/models/sana/batcher.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/safetensors.h"
#include "worker/models/sana/sampler.h"
#include "worker/models/sana/sana_config.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker::sana {
namespace {

using test_util::FileExists;
using test_util::RelErr;
using test_util::SanaGoldenDir;

constexpr double kStreamTol = 1e-5;  // streaming vs whole-sequence chunk-causal, float32



bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Random weights following the golden file's init rules (README §4), so that every path
// contributes and the recurrences stay contractive.
at::Tensor RandomParameter(const std::string& name, const std::vector<int64_t>& shape) {
  const at::Tensor n = at::randn(shape);
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  const double inv = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(1, fan_in)));
  const bool weak = Contains(name, "out_proj_cam") || Contains(name, "plucker_proj") ||
                    Contains(name, "plucker_embedder") || Contains(name, "t_conv");
  if (EndsWith(name, "scale_shift_table") || EndsWith(name, "y_embedding")) {
    return n.div(std::sqrt(static_cast<double>(shape.back())));
  }
  if (Contains(name, "norm")) return n.mul(0.1).add(1.0);
  if (Contains(name, "conv_k")) {
    at::Tensor w = n.mul(0.3);
    w.narrow(2, shape[2] - 1, 1).copy_(n.narrow(2, shape[2] - 1, 1).mul(0.1).add(1.0));
    return w;
  }
  if (EndsWith(name, "beta_proj.bias")) return n.mul(0.5).add(2.0);
  if (EndsWith(name, "gate_proj.bias")) return n.mul(0.5);
  if (EndsWith(name, "dt_bias")) return n.mul(0.5).add(-2.0);
  if (EndsWith(name, "A_log")) return n.mul(0.3);
  if (EndsWith(name, "recall_gate")) return at::zeros(shape);
  if (EndsWith(name, "output_gate.bias")) return n.mul(0.1).add(1.278464542761074);
  if (EndsWith(name, "output_gate.weight")) return n.mul(0.5 * inv);
  if (shape.size() == 1) return n.mul(weak ? 0.05 : 0.1);
  return n.mul(weak ? 0.5 * inv : inv);
}

std::unique_ptr<SanaTransformer> RandomTinyModel(uint64_t seed) {
  auto model = std::make_unique<SanaTransformer>(SanaConfig::Preset("tiny"));
  at::manual_seed(seed);
  model->LoadWeights(RandomParameter);
  return model;
}

std::unique_ptr<SanaTransformer> GoldenTinyModel() {
  const std::string dir = SanaGoldenDir();
  if (!FileExists(dir + "/weights.safetensors") || !FileExists(dir + "/bidirectional.safetensors")) {
    return nullptr;
  }
  const SafetensorsFile weights = SafetensorsFile::Open(dir + "/weights.safetensors");
  const SafetensorsFile bidir = SafetensorsFile::Open(dir + "/bidirectional.safetensors");
  auto model = std::make_unique<SanaTransformer>(SanaConfig::FromDiffusersJson(bidir.Metadata("config")));
  model->LoadWeights(weights, at::kFloat);
  return model;
}

// Synthetic camera rows for T latent frames: c2w = [R_y(5deg * t) | (0.1 t, 0, 0.2 t)], row-major,
// then the tiny grid's latent intrinsics.
at::Tensor SyntheticCamera(int64_t batch, int64_t frames) {
  at::Tensor cam = at::zeros({batch, frames, 20});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < frames; ++t) {
      const double a = (b ? -0.05 : 0.0872665) * static_cast<double>(t);
      const float m[16] = {static_cast<float>(std::cos(a)), 0, static_cast<float>(std::sin(a)),
                           static_cast<float>(0.1 * t), 0, 1, 0, 0,
                           static_cast<float>(-std::sin(a)), 0, static_cast<float>(std::cos(a)),
                           static_cast<float>(0.2 * t), 0, 0, 0, 1};
      for (int i = 0; i < 16; ++i) cam[b][t][i] = m[i];
      cam[b][t][16] = 1.5625;
      cam[b][t][17] = 1.42045;
      cam[b][t][18] = 2.0;
      cam[b][t][19] = 1.0;
    }
  }
  return cam;
}

struct SeqInputs {
  at::Tensor hidden, timestep, text, mask, camera, plucker;
  std::vector<FrameRange> plan;
};

SeqInputs MakeInputs(const SanaConfig& cfg, int64_t batch, int64_t frames, uint64_t seed) {
  at::manual_seed(seed);
  SeqInputs in;
  const int64_t h = 2, w = 4;
  in.plan = StreamingChunkPlan(frames);
  in.hidden = at::randn({batch, cfg.in_channels, frames, h, w});
  // Per-chunk timesteps (condition frame 0 at 0), different per batch entry.
  in.timestep = at::zeros({batch, 1, frames});
  for (int64_t b = 0; b < batch; ++b) {
    for (size_t c = 0; c < in.plan.size(); ++c) {
      const double t = (c % 3 == 0) ? 0.0 : 100.0 + 850.0 * at::rand({1}).item<double>();
      in.timestep[b][0].narrow(0, in.plan[c].begin, in.plan[c].size()).fill_(t);
    }
    in.timestep[b][0][0] = 0.0;
  }
  in.text = at::randn({batch, 1, cfg.model_max_length, cfg.caption_channels});
  in.mask = at::ones({batch, cfg.model_max_length}, at::kLong);
  in.mask[0].narrow(0, 5, cfg.model_max_length - 5).fill_(0);
  in.camera = SyntheticCamera(batch, frames);
  in.plucker = at::randn({batch, cfg.chunk_plucker_channels, frames, h, w});
  return in;
}

at::Tensor RunStreaming(const SanaTransformer& model, const SeqInputs& in,
                        const SanaForwardOptions& options, const KvWindowRule& rule) {
  SanaStreamingCache cache;
  cache.rule = rule;
  std::vector<at::Tensor> outs;
  for (const FrameRange& r : in.plan) {
    outs.push_back(model.ForwardChunk(
        in.hidden.narrow(2, r.begin, r.size()), in.timestep.narrow(2, r.begin, r.size()), in.text,
        in.mask, in.camera.narrow(1, r.begin, r.size()), in.plucker.narrow(2, r.begin, r.size()),
        r.begin, cache, /*save_state=*/true, options));
  }
  return at::cat(outs, 2);
}

void ExpectStreamingMatchesChunkCausal(const SanaTransformer& model, const std::string& what) {
  const SeqInputs in = MakeInputs(model.config(), /*batch=*/2, /*frames=*/13, /*seed=*/7);
  struct Variant {
    const char* name;
    SanaForwardOptions options;
    KvWindowRule rule;
  };
  KvWindowRule teacher;
  teacher.num_cached_blocks = 0;
  const std::vector<Variant> variants = {
      {"streaming options", StreamingForwardOptions(), KvWindowRule{}},
      {"bidirectional options", SanaForwardOptions{}, KvWindowRule{}},
      {"teacher window", StreamingForwardOptions(), teacher},
  };
  for (const Variant& v : variants) {
    const at::Tensor ref = model.ForwardChunkCausal(in.hidden, in.timestep, in.text, in.mask,
                                                    in.camera, in.plucker, in.plan, v.rule,
                                                    v.options);
    const at::Tensor got = RunStreaming(model, in, v.options, v.rule);
    ASSERT_EQ(got.sizes(), ref.sizes());
    EXPECT_TRUE(at::isfinite(ref).all().item<bool>());
    const double err = RelErr(got, ref);
    std::cout << what << " / " << v.name << ": streaming vs chunk-causal rel err " << err << "\n";
    EXPECT_LE(err, kStreamTol) << what << " / " << v.name;
  }
  // The chunk-causal model differs from the bidirectional one (the test is not vacuous), and
  // the first chunk alone equals a bidirectional forward over it.
  const at::Tensor bidir = model.Forward(in.hidden, in.timestep, in.text, in.mask, in.camera,
                                         in.plucker);
  const at::Tensor cc = model.ForwardChunkCausal(in.hidden, in.timestep, in.text, in.mask,
                                                 in.camera, in.plucker, in.plan);
  EXPECT_GT(RelErr(cc, bidir), 1e-3);
  const FrameRange c0 = in.plan[0];
  const at::Tensor first = model.Forward(
      in.hidden.narrow(2, 0, c0.size()), in.timestep.narrow(2, 0, c0.size()), in.text, in.mask,
      in.camera.narrow(1, 0, c0.size()), in.plucker.narrow(2, 0, c0.size()));
  EXPECT_LE(RelErr(cc.narrow(2, 0, c0.size()), first), kStreamTol);
}

TEST(SanaStreamingForwardTest, RandomWeightsStreamingEqualsChunkCausal) {
  const auto model = RandomTinyModel(11);
  ExpectStreamingMatchesChunkCausal(*model, "random weights");
}

TEST(SanaStreamingForwardTest, GoldenWeightsStreamingEqualsChunkCausal) {
  const auto model = GoldenTinyModel();
  if (!model) GTEST_SKIP() << "golden data not found in " << SanaGoldenDir();
  ExpectStreamingMatchesChunkCausal(*model, "golden weights");
}

std::vector<at::Tensor> CacheTensors(const SanaStreamingCache& cache) {
  std::vector<at::Tensor> out;
  for (const SanaBlockCache& b : cache.blocks) {
    for (const at::Tensor& t : {b.gdn.kv, b.gdn.z, b.cam_kv, b.conv_k_tail, b.conv_k_cam_tail,
                                b.ffn_tail}) {
      if (t.defined()) out.push_back(t.clone());
    }
    for (const SanaBlockCache::ChunkKv& e : b.kv) {
      for (const at::Tensor& t : {e.k, e.v, e.cam_k, e.cam_v}) out.push_back(t.clone());
    }
  }
  return out;
}

TEST(SanaStreamingForwardTest, ReadOnlyPassesLeaveTheCacheUnchanged) {
  const auto model = RandomTinyModel(12);
  const SeqInputs in = MakeInputs(model->config(), 1, 13, 8);
  SanaStreamingCache cache;
  for (size_t c = 0; c < in.plan.size(); ++c) {
    const FrameRange r = in.plan[c];
    auto pass = [&](const at::Tensor& hidden, bool save) {
      return model->ForwardChunk(hidden, in.timestep.narrow(2, r.begin, r.size()), in.text,
                                 in.mask, in.camera.narrow(1, r.begin, r.size()),
                                 in.plucker.narrow(2, r.begin, r.size()), r.begin, cache, save,
                                 StreamingForwardOptions());
    };
    const std::vector<at::Tensor> before = CacheTensors(cache);
    const int64_t bytes = cache.bytes();
    for (int i = 0; i < 3; ++i) pass(at::randn({1, model->config().in_channels, r.size(), 2, 4}), false);
    const std::vector<at::Tensor> after = CacheTensors(cache);
    ASSERT_EQ(before.size(), after.size());
    for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(before[i], after[i])) << i;
    EXPECT_EQ(cache.chunks, static_cast<int64_t>(c));
    EXPECT_EQ(cache.next_frame, r.begin);
    EXPECT_EQ(cache.bytes(), bytes);
    // A read-only pass on the real input equals the KV-save pass's output.
    const at::Tensor hidden = in.hidden.narrow(2, r.begin, r.size());
    const at::Tensor ro = pass(hidden, false);
    const at::Tensor saved = pass(hidden, true);
    EXPECT_TRUE(at::equal(ro, saved));
    EXPECT_EQ(cache.chunks, static_cast<int64_t>(c + 1));
    // Softmax window: sink chunk 0 + the latest chunk.
    const int soft = 3;  // tiny: blocks 3 and 7 are softmax
    ASSERT_TRUE(model->config().IsSoftmaxBlock(soft));
    std::vector<int64_t> chunks;
    for (const auto& e : cache.blocks[soft].kv) chunks.push_back(e.chunk);
    EXPECT_EQ(chunks, CachedChunksFor(static_cast<int64_t>(c + 1)));
  }
  // Wrong frame offset.
  EXPECT_THROW(model->ForwardChunk(in.hidden.narrow(2, 0, 3), in.timestep.narrow(2, 0, 3), in.text,
                                   in.mask, in.camera.narrow(1, 0, 3), in.plucker.narrow(2, 0, 3),
                                   0, cache, false),
               InvalidInputError);
}

RolloutInputs MakeRolloutInputs(const SanaConfig& cfg, int64_t frames, uint64_t seed) {
  at::manual_seed(1234);
  RolloutInputs in;
  in.first_latent = at::randn({1, cfg.in_channels, 1, 2, 4});
  in.camera_conditions = SyntheticCamera(1, frames);
  in.chunk_plucker = at::randn({1, cfg.chunk_plucker_channels, frames, 2, 4});
  in.text = at::randn({1, 1, cfg.model_max_length, cfg.caption_channels});
  in.text_mask = at::ones({1, cfg.model_max_length}, at::kLong);
  in.text_mask.narrow(1, 6, cfg.model_max_length - 6).fill_(0);
  in.uncond_text = at::randn({1, 1, cfg.model_max_length, cfg.caption_channels}).mul(0.1);
  in.uncond_mask = at::zeros({1, cfg.model_max_length}, at::kLong);
  in.uncond_mask.narrow(1, 0, 1).fill_(1);
  in.seed = seed;
  return in;
}

at::Tensor RunAll(StreamingRollout& rollout) {
  std::vector<at::Tensor> chunks;
  for (int i = 0; i < rollout.num_chunks(); ++i) chunks.push_back(rollout.NextChunk(nullptr));
  return at::cat(chunks, 2);
}

TEST(SanaStreamingRolloutTest, SeedsChunksAndConditionFrame) {
  const auto model = RandomTinyModel(13);
  const RolloutInputs in = MakeRolloutInputs(model->config(), 10, 5);
  StreamingRollout a(*model, in), b(*model, in);
  ASSERT_EQ(a.num_chunks(), 3);
  EXPECT_EQ(a.chunk(0), (FrameRange{0, 4}));
  EXPECT_EQ(a.chunk(2), (FrameRange{7, 10}));
  EXPECT_THROW(a.chunk(3), InvalidInputError);
  const at::Tensor xa = RunAll(a), xb = RunAll(b);
  ASSERT_EQ(xa.sizes(), c10::IntArrayRef({1, model->config().in_channels, 10, 2, 4}));
  EXPECT_TRUE(at::isfinite(xa).all().item<bool>());
  EXPECT_TRUE(at::equal(xa, xb));
  EXPECT_TRUE(at::equal(xa.narrow(2, 0, 1), in.first_latent));
  EXPECT_THROW(a.NextChunk(nullptr), InvalidInputError);
  RolloutInputs other = in;
  other.seed = 6;
  StreamingRollout c(*model, other);
  const at::Tensor xc = RunAll(c);
  EXPECT_GT(xc.sub(xa).abs().max().item<double>(), 1e-3);
  EXPECT_TRUE(at::equal(xc.narrow(2, 0, 1), in.first_latent));
}

TEST(SanaStreamingRolloutTest, CacheBytesConstantAfterWarmUp) {
  const auto model = RandomTinyModel(14);
  StreamingRollout rollout(*model, MakeRolloutInputs(model->config(), 34, 1));
  ASSERT_EQ(rollout.num_chunks(), 11);
  std::vector<int64_t> bytes;
  for (int i = 0; i < rollout.num_chunks(); ++i) {
    rollout.NextChunk(nullptr);
    bytes.push_back(rollout.cache_bytes());
  }
  std::cout << "cache_bytes after chunk 0/1/2/10: " << bytes[0] << " " << bytes[1] << " "
            << bytes[2] << " " << bytes[10] << "\n";
  EXPECT_GT(bytes[2], 0);
  EXPECT_EQ(bytes[2], bytes[10]);
  for (int i = 2; i <= 10; ++i) EXPECT_EQ(bytes[i], bytes[2]) << i;
}

TEST(SanaStreamingRolloutTest, CancellationThrowsBeforeTheNextForward) {
  const auto model = RandomTinyModel(15);
  StreamingRollout rollout(*model, MakeRolloutInputs(model->config(), 7, 1));
  std::vector<std::pair<int, int>> calls;
  rollout.NextChunk([&](int step, int total) {
    calls.emplace_back(step, total);
    return true;
  });
  ASSERT_EQ(calls.size(), 5u);
  EXPECT_EQ(calls[0], std::make_pair(0, 5));
  EXPECT_EQ(calls[4], std::make_pair(4, 5));
  const int64_t bytes = rollout.cache_bytes();
  const std::vector<at::Tensor> before = CacheTensors(rollout.cache());
  int seen = 0;
  EXPECT_THROW(rollout.NextChunk([&](int step, int) {
    ++seen;
    return step < 2;
  }),
               RolloutCancelled);
  EXPECT_EQ(seen, 3);
  EXPECT_EQ(rollout.cache_bytes(), bytes);
  const std::vector<at::Tensor> after = CacheTensors(rollout.cache());
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(before[i], after[i]));
  // Cancelling right before the KV-save pass leaves the cache untouched too.
  StreamingRollout r2(*model, MakeRolloutInputs(model->config(), 7, 1));
  EXPECT_THROW(r2.NextChunk([](int step, int) { return step < 4; }), RolloutCancelled);
  EXPECT_EQ(r2.cache_bytes(), 0);
}

TEST(SanaBidirectionalRolloutTest, RunsAndCfgScaleOneIsNoCfg) {
  const auto model = RandomTinyModel(16);
  const RolloutInputs in = MakeRolloutInputs(model->config(), 7, 3);
  int calls = 0;
  BidirectionalRollout cfg5(*model, in, /*steps=*/3, /*cfg_scale=*/5.0);
  const at::Tensor x5 = cfg5.Run([&](int step, int total) {
    EXPECT_EQ(step, calls);
    EXPECT_EQ(total, 3);
    ++calls;
    return true;
  });
  EXPECT_EQ(calls, 3);
  ASSERT_EQ(x5.sizes(), c10::IntArrayRef({1, model->config().in_channels, 7, 2, 4}));
  EXPECT_TRUE(at::isfinite(x5).all().item<bool>());
  EXPECT_TRUE(at::equal(x5.narrow(2, 0, 1), in.first_latent));

  BidirectionalRollout cfg1(*model, in, 3, 1.0);
  RolloutInputs no_uncond = in;
  no_uncond.uncond_text = at::Tensor();
  no_uncond.uncond_mask = at::Tensor();
  BidirectionalRollout plain(*model, no_uncond, 3, 5.0);
  const at::Tensor x1 = cfg1.Run(nullptr), xp = plain.Run(nullptr);
  EXPECT_TRUE(at::equal(x1, xp));
  EXPECT_GT(x5.sub(x1).abs().max().item<double>(), 1e-4);
  // Same seed -> identical; the batched CFG equals two separate forwards per step (within fp32).
  EXPECT_TRUE(at::equal(BidirectionalRollout(*model, in, 3, 5.0).Run(nullptr), x5));
  RolloutInputs short_uncond = in;
  short_uncond.uncond_text = in.uncond_text.narrow(2, 0, 4).contiguous();
  short_uncond.uncond_mask = in.uncond_mask.narrow(1, 0, 4).contiguous();
  RolloutInputs padded = in;  // the same uncond text padded with masked tokens
  padded.uncond_text = at::cat({short_uncond.uncond_text,
                                at::zeros({1, 1, in.uncond_text.size(2) - 4,
                                           in.uncond_text.size(3)})}, 2);
  padded.uncond_mask = at::cat({short_uncond.uncond_mask,
                                at::zeros({1, in.uncond_text.size(2) - 4}, at::kLong)}, 1);
  const at::Tensor xs = BidirectionalRollout(*model, short_uncond, 3, 5.0).Run(nullptr);
  const at::Tensor xpad = BidirectionalRollout(*model, padded, 3, 5.0).Run(nullptr);
  EXPECT_TRUE(at::isfinite(xs).all().item<bool>());
  EXPECT_LE(RelErr(xs, xpad), 1e-3);  // masked padding is -10000, not -inf: close, not equal
}

TEST(SanaBidirectionalRolloutTest, CancellationIsPrompt) {
  const auto model = RandomTinyModel(17);
  BidirectionalRollout rollout(*model, MakeRolloutInputs(model->config(), 7, 3), 10, 5.0);
  int seen = 0;
  EXPECT_THROW(rollout.Run([&](int step, int total) {
    ++seen;
    EXPECT_EQ(total, 10);
    return step < 1;
  }),
               RolloutCancelled);
  EXPECT_EQ(seen, 2);
}

TEST(SanaRolloutInputsTest, BadShapesAreInvalidInput) {
  const auto model = RandomTinyModel(18);
  RolloutInputs in = MakeRolloutInputs(model->config(), 7, 3);
  RolloutInputs bad = in;
  bad.first_latent = at::randn({1, 3, 1, 2, 4});
  EXPECT_THROW(StreamingRollout(*model, bad), InvalidInputError);
  bad = in;
  bad.camera_conditions = SyntheticCamera(1, 8);  // 8 latent frames is not 3k+1
  bad.chunk_plucker = at::randn({1, 48, 8, 2, 4});
  EXPECT_THROW(StreamingRollout(*model, bad), InvalidInputError);
  bad = in;
  bad.chunk_plucker = at::randn({1, 48, 6, 2, 4});
  EXPECT_THROW(StreamingRollout(*model, bad), InvalidInputError);
}

// --- co-batching (ForwardChunkBatch, StreamingRollout::NextChunkBatch, StreamingBatcher) ------

namespace cobatch {

// Three rollouts that differ in everything a co-batch may mix: seed, camera, Plücker rays,
// prompt (and its length) and rollout length.
std::vector<RolloutInputs> DistinctInputs(const SanaConfig& cfg) {
  std::vector<RolloutInputs> out;
  const int64_t frames[] = {19, 16, 13};
  for (int i = 0; i < 3; ++i) {
    RolloutInputs in = MakeRolloutInputs(cfg, frames[i], 40 + i);
    at::manual_seed(500 + i);
    in.first_latent = at::randn_like(in.first_latent);
    in.chunk_plucker = at::randn_like(in.chunk_plucker);
    const int64_t length = cfg.model_max_length - 2 * i;  // 8, 6, 4 tokens: padded in a batch
    in.text = at::randn({1, 1, length, cfg.caption_channels});
    in.text_mask = at::ones({1, length}, at::kLong);
    if (i == 1) in.text_mask.narrow(1, 4, length - 4).fill_(0);
    out.push_back(std::move(in));
  }
  out[1].camera_conditions = SyntheticCamera(2, 16).narrow(0, 1, 1).contiguous();
  return out;
}

std::vector<at::Tensor> SoloChunks(const SanaTransformer& model, const RolloutInputs& in) {
  StreamingRollout rollout(model, in);
  std::vector<at::Tensor> chunks;
  while (!rollout.done()) chunks.push_back(rollout.NextChunk(nullptr));
  return chunks;
}

}  // namespace cobatch

TEST(SanaCoBatchTest, BatchShapesFallIntoThreeClasses) {
  const auto model = RandomTinyModel(21);
  StreamingRollout r(*model, MakeRolloutInputs(model->config(), 16, 1));
  const StreamingBatchShape first = r.NextChunkShape();
  r.NextChunk(nullptr);
  const StreamingBatchShape second = r.NextChunkShape();
  r.NextChunk(nullptr);
  const StreamingBatchShape third = r.NextChunkShape();
  r.NextChunk(nullptr);
  const StreamingBatchShape fourth = r.NextChunkShape();
  EXPECT_NE(first, second);
  EXPECT_NE(second, third);
  EXPECT_EQ(third, fourth) << third.ToString() << " vs " << fourth.ToString();
  EXPECT_EQ(first.chunk_frames, 4);
  EXPECT_EQ(third.window_tokens.size(), 2u);  // sink + latest
}

TEST(SanaCoBatchTest, BatchedChunksEqualSoloChunksAtDifferentOffsets) {
  const auto model = RandomTinyModel(22);
  const std::vector<RolloutInputs> inputs = cobatch::DistinctInputs(model->config());
  std::vector<std::vector<at::Tensor>> solo;
  for (const RolloutInputs& in : inputs) solo.push_back(cobatch::SoloChunks(*model, in));

  // Bring the rollouts to different chunk indices solo (2, 3 and 2: all in the steady state, at
  // different frame offsets), then run them together until each is done.
  std::vector<std::unique_ptr<StreamingRollout>> rollouts;
  std::vector<std::vector<at::Tensor>> got(3);
  const int warm[] = {2, 3, 2};
  for (int i = 0; i < 3; ++i) {
    rollouts.push_back(std::make_unique<StreamingRollout>(*model, inputs[i]));
    for (int c = 0; c < warm[i]; ++c) got[i].push_back(rollouts[i]->NextChunk(nullptr));
  }
  int batched_chunks = 0;
  for (;;) {
    std::vector<StreamingRollout*> batch;
    std::vector<int> which;
    for (int i = 0; i < 3; ++i) {
      if (!rollouts[i]->done()) {
        batch.push_back(rollouts[i].get());
        which.push_back(i);
      }
    }
    if (batch.empty()) break;
    const auto outcomes = StreamingRollout::NextChunkBatch(
        batch, std::vector<StepCallback>(batch.size(), nullptr));
    for (size_t j = 0; j < batch.size(); ++j) {
      ASSERT_FALSE(outcomes[j].cancelled);
      got[which[j]].push_back(outcomes[j].latents);
    }
    batched_chunks += static_cast<int>(batch.size());
  }
  EXPECT_GE(batched_chunks, 6);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i].size(), solo[i].size());
    for (size_t c = 0; c < solo[i].size(); ++c) {
      const double err = RelErr(got[i][c], solo[i][c]);
      EXPECT_LE(err, kStreamTol) << "rollout " << i << " chunk " << c;
    }
  }
  // Not vacuous: the rollouts' chunks differ from each other.
  EXPECT_GT(RelErr(got[0][3], got[2][3]), 1e-2);
}

TEST(SanaCoBatchTest, FirstChunksBatchTooAndIncompatibleShapesAreRefused) {
  const auto model = RandomTinyModel(23);
  const std::vector<RolloutInputs> inputs = cobatch::DistinctInputs(model->config());
  StreamingRollout a(*model, inputs[0]), b(*model, inputs[1]);
  // Chunk 0 of both (the condition frame restored in each) in one batch.
  const auto outcomes = StreamingRollout::NextChunkBatch({&a, &b}, {nullptr, nullptr});
  EXPECT_LE(RelErr(outcomes[0].latents, cobatch::SoloChunks(*model, inputs[0])[0]), kStreamTol);
  EXPECT_LE(RelErr(outcomes[1].latents, cobatch::SoloChunks(*model, inputs[1])[0]), kStreamTol);
  // a at chunk 1 (sink only), b at chunk 2 (sink + latest): different shapes.
  b.NextChunk(nullptr);
  EXPECT_THROW(StreamingRollout::NextChunkBatch({&a, &b}, {nullptr, nullptr}), InvalidInputError);
  SanaStreamingCache empty;
  std::vector<SanaStreamingCache*> caches = {&empty};
  EXPECT_THROW(model->ForwardChunkBatch(at::zeros({2, 8, 3, 2, 4}), at::zeros({2, 1, 3}),
                                        inputs[0].text.repeat({2, 1, 1, 1}), at::Tensor(),
                                        at::Tensor(), at::Tensor(), caches, false),
               InvalidInputError);
}

TEST(SanaCoBatchTest, ACancelledMemberLeavesWithinOneStepAndTheOthersGoOn) {
  const auto model = RandomTinyModel(24);
  const std::vector<RolloutInputs> inputs = cobatch::DistinctInputs(model->config());
  const std::vector<at::Tensor> solo_a = cobatch::SoloChunks(*model, inputs[0]);
  const std::vector<at::Tensor> solo_b = cobatch::SoloChunks(*model, inputs[1]);
  StreamingRollout a(*model, inputs[0]), b(*model, inputs[1]);
  int a_forwards = 0, b_forwards = 0;
  const StepCallback cancel_a_at_2 = [&](int step, int) {
    if (step == 2) return false;
    ++a_forwards;
    return true;
  };
  const StepCallback count_b = [&](int, int) {
    ++b_forwards;
    return true;
  };
  const auto outcomes = StreamingRollout::NextChunkBatch({&a, &b}, {cancel_a_at_2, count_b});
  EXPECT_TRUE(outcomes[0].cancelled);
  EXPECT_EQ(outcomes[0].cancelled_before, 2);
  EXPECT_FALSE(outcomes[0].latents.defined());
  EXPECT_EQ(a_forwards, 2);
  EXPECT_EQ(b_forwards, 5);
  EXPECT_LE(RelErr(outcomes[1].latents, solo_b[0]), kStreamTol);
  // The cancelled member committed nothing: it can still run its chunk 0 and match.
  EXPECT_EQ(a.chunks_done(), 0);
  EXPECT_LE(RelErr(a.NextChunk(nullptr), solo_a[0]), kStreamTol);
  EXPECT_LE(RelErr(b.NextChunk(nullptr), solo_b[1]), kStreamTol);
}

TEST(SanaCoBatchTest, BatcherRunsConcurrentRolloutsInLockstepBatches) {
  const auto model = RandomTinyModel(25);
  const std::vector<RolloutInputs> inputs = cobatch::DistinctInputs(model->config());
  std::vector<std::vector<at::Tensor>> solo;
  for (const RolloutInputs& in : inputs) solo.push_back(cobatch::SoloChunks(*model, in));

  StreamingBatcher::Options options;
  options.max_batch = 4;
  // Wait for every member (no timing in the test): each batch holds all rollouts still running.
  options.gather_fraction = 1e9;
  options.max_gather = std::chrono::seconds(60);
  std::vector<int> sizes;
  std::mutex sizes_mu;
  options.on_batch = [&](int size, double) {
    std::lock_guard<std::mutex> lock(sizes_mu);
    sizes.push_back(size);
  };
  StreamingBatcher batcher(options);
  std::vector<std::unique_ptr<StreamingBatcher::Membership>> members;
  for (int i = 0; i < 3; ++i) members.push_back(batcher.Join());
  std::vector<std::vector<at::Tensor>> got(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      c10::InferenceMode inference;
      StreamingRollout rollout(*model, inputs[i]);
      while (!rollout.done()) {
        got[i].push_back(batcher.NextChunk(rollout, nullptr, [] { return false; }));
      }
      members[i].reset();  // leaves: the others stop waiting for it
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i].size(), solo[i].size());
    for (size_t c = 0; c < solo[i].size(); ++c) {
      EXPECT_LE(RelErr(got[i][c], solo[i][c]), kStreamTol) << "rollout " << i << " chunk " << c;
    }
  }
  // 19, 16 and 13 frames = 6, 5 and 4 chunks: 4 batches of 3, one of 2, one of 1.
  EXPECT_EQ(sizes, (std::vector<int>{3, 3, 3, 3, 2, 1}));
  const StreamingBatcher::Stats stats = batcher.stats();
  EXPECT_EQ(stats.batches, 6u);
  EXPECT_EQ(stats.chunks, 15u);
}

TEST(SanaCoBatchTest, BatcherCancelWhileWaitingAndMaxBatchOne) {
  const auto model = RandomTinyModel(26);
  const std::vector<RolloutInputs> inputs = cobatch::DistinctInputs(model->config());
  {
    StreamingBatcher::Options options;
    options.gather_fraction = 1e9;
    options.max_gather = std::chrono::seconds(60);
    StreamingBatcher batcher(options);
    auto a = batcher.Join();
    auto b = batcher.Join();  // never arrives: a would wait for it without the cancel
    StreamingRollout rollout(*model, inputs[0]);
    int polls = 0;  // cancelled on the third poll of the wait loop
    EXPECT_THROW(batcher.NextChunk(rollout, nullptr, [&] { return ++polls >= 3; }),
                 RolloutCancelled);
    EXPECT_EQ(polls, 3);
    EXPECT_EQ(rollout.chunks_done(), 0);
  }
  StreamingBatcher::Options one;
  one.max_batch = 1;
  StreamingBatcher batcher(one);
  auto member = batcher.Join();
  auto other = batcher.Join();
  StreamingRollout rollout(*model, inputs[2]);
  const at::Tensor chunk = batcher.NextChunk(rollout, nullptr, nullptr);
  EXPECT_LE(RelErr(chunk, cobatch::SoloChunks(*model, inputs[2])[0]), kStreamTol);
  EXPECT_EQ(batcher.stats().batches_by_size[1], 1u);
}

}  // namespace
}  // namespace wmserve::worker::sana
