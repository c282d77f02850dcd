// Tests for the LTX-2.0 video transformer port and SANA-WM's refiner driving it
// (worker/models/ltx2/{refiner_config,ltx2_transformer,refiner}.h). fp32, CPU.
//
//  * Golden parity with ../shared/golden/ltx2-refiner-tiny (README there): the model is built from
//    the `config` metadata and weights.safetensors, and each README §3 call is replayed. Compared
//    with err = max|port - ref| / max|ref| (README §7): outputs, block.*, step.*, block{b}.*,
//    sink.* and other inter.* within 1e-5; RoPE tables within 1e-6 absolute; the timestep
//    sinusoid within 1e-4 absolute. Skipped (GTEST_SKIP naming the folder) when absent.
//  * Invariants of spec §5 (11-21) on the golden weights where they are available, else on seeded
//    dummy weights at the tiny preset: parameter counts, RoPE rotation / relative position, sink
//    split == masked attention, trivial streaming == plain forward, sink re-RoPE identity, text
//    K/V cache, Euler forms and the oracle, per-token == grouped timesteps, history trimming and
//    the KV window, streaming == block-causal forward, single-block streaming == offline, cancel,
//    seeded noise, and precise errors for bad inputs and configs.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/model_test_util.h"
#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/refiner.h"
#include "worker/models/ltx2/refiner_config.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/json.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::ltx2 {
namespace {

using test_util::FileExists;
using test_util::GoldenDir;
using test_util::MaxAbs;
using test_util::RelErr;

using sana::ConfigError;
using sana::InvalidInputError;
using sana::RolloutCancelled;
using sana::SafetensorsError;
using sana::SafetensorsFile;
using ::testing::HasSubstr;

constexpr double kOutputTol = 1e-5;     // output.*, block.*, step.*, block{b}.*, sink.*, inter.*
constexpr double kRopeAbsTol = 1e-6;    // inter.rope_cos/sin, rope.*
constexpr double kSinusoidAbsTol = 1e-4;  // inter.timestep_sinusoid (README §5.2)
constexpr double kInvariantTol = 1e-5;  // two exact rewrites of the same arithmetic

const char* const kGoldenName = "ltx2-refiner-tiny";

double AbsErr(const at::Tensor& got, const at::Tensor& ref) {
  return MaxAbs(got.to(at::kDouble).sub(ref.to(at::kDouble)));
}

// Worst error per golden tensor, printed at the end of the run.
std::map<std::string, double>& ErrorLog() {
  static auto* log = new std::map<std::string, double>();
  return *log;
}

class ErrorReport : public ::testing::Environment {
 public:
  void TearDown() override {
    // The worst error per group (the part of the name before ':').
    std::map<std::string, double> groups;
    for (const auto& [name, err] : ErrorLog()) {
      std::string group = name.substr(0, name.find(':'));
      double& worst = groups[group];
      worst = std::max(worst, err);
    }
    for (const auto& [group, err] : groups) {
      std::cout << "golden " << group << ": max err " << err << "\n";
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kErrorReport =
    ::testing::AddGlobalTestEnvironment(new ErrorReport);

// `what` is "group:tensor"; the group collects the worst error for the summary.
::testing::AssertionResult Close(const at::Tensor& got, const at::Tensor& ref, double tol,
                                 const std::string& what, bool absolute = false) {
  if (!got.defined()) return ::testing::AssertionFailure() << what << ": not produced";
  if (got.sizes() != ref.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs reference "
                                         << ref.sizes();
  }
  const double err = absolute ? AbsErr(got, ref) : RelErr(got, ref);
  double& worst = ErrorLog()[what];
  worst = std::max(worst, err);
  if (!(err <= tol)) {
    return ::testing::AssertionFailure() << what << ": " << (absolute ? "abs" : "rel") << " err "
                                         << err << " > " << tol;
  }
  return ::testing::AssertionSuccess();
}

// Invariant comparisons (not logged).
::testing::AssertionResult Near(const at::Tensor& got, const at::Tensor& ref, double tol,
                                const std::string& what) {
  if (!got.defined() || !ref.defined()) {
    return ::testing::AssertionFailure() << what << ": undefined";
  }
  if (got.sizes() != ref.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs "
                                         << ref.sizes();
  }
  const double err = RelErr(got, ref);
  if (!(err <= tol)) return ::testing::AssertionFailure() << what << ": rel err " << err;
  return ::testing::AssertionSuccess();
}

// --- golden data --------------------------------------------------------------------------------

struct Golden {
  std::unique_ptr<SafetensorsFile> weights, forward, offline, stream;
  TransformerConfig config;
  std::shared_ptr<Ltx2Transformer> model;
};

// Loaded once; nullptr when the folder or a file is absent.
const Golden* LoadGolden() {
  static std::once_flag once;
  static Golden* golden = nullptr;
  std::call_once(once, [] {
    const std::string dir = GoldenDir(kGoldenName);
    for (const char* f : {"weights.safetensors", "forward.safetensors",
                          "refine_offline.safetensors", "refine_stream.safetensors"}) {
      if (!FileExists(dir + "/" + f)) return;
    }
    auto g = new Golden();
    g->weights = std::make_unique<SafetensorsFile>(SafetensorsFile::Open(dir + "/weights.safetensors"));
    g->forward = std::make_unique<SafetensorsFile>(SafetensorsFile::Open(dir + "/forward.safetensors"));
    g->offline =
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(dir + "/refine_offline.safetensors"));
    g->stream =
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(dir + "/refine_stream.safetensors"));
    g->config = TransformerConfig::FromJson(g->weights->Metadata("config"));
    g->config.Validate();
    g->model = std::make_shared<Ltx2Transformer>(g->config);
    g->model->LoadWeights(*g->weights, at::kFloat);
    golden = g;
  });
  return golden;
}

#define REQUIRE_GOLDEN(g)                                                                     \
  const Golden* g = LoadGolden();                                                             \
  if (!g) {                                                                                   \
    GTEST_SKIP() << "golden data not found in " << GoldenDir(kGoldenName)           \
                 << " (set WMSERVE_GOLDEN_ROOT to the folder holding " << kGoldenName << ")"; \
  }

// The golden model where available, else a tiny model with dummy weights (same config).
std::shared_ptr<Ltx2Transformer> TinyModel() {
  if (const Golden* g = LoadGolden()) return g->model;
  static std::shared_ptr<Ltx2Transformer> dummy = [] {
    auto m = std::make_shared<Ltx2Transformer>(TransformerConfig::Preset("tiny"));
    m->InitDummyWeights(20260611);
    return m;
  }();
  return dummy;
}

// Seeded inputs for invariant tests.
at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat);
}

Ltx2TextContext RandomText(const Ltx2Transformer& m, int64_t batch, uint64_t seed,
                           bool cache = true) {
  return m.PrepareText(Randn({batch, 16, m.config().caption_channels}, seed), {}, cache);
}

// Grouped timesteps [sink at 0, rest at `t`] for every sample.
Ltx2Timesteps SinkAndCurrent(int64_t batch, int64_t n_sink, int64_t n_rest, double t) {
  at::Tensor v = at::zeros({batch, 2});
  v.select(1, 1).fill_(t);
  return Ltx2Timesteps::Grouped(v, {n_sink, n_rest});
}

// ------------------------------------------------------------------------------------------------
// Configuration

TEST(Ltx2RefinerConfig, PresetsAndGoldenMetadataParse) {
  const TransformerConfig tiny = TransformerConfig::Preset("tiny");
  EXPECT_EQ(tiny.inner_dim(), 64);
  EXPECT_EQ(tiny.num_layers, 2);
  EXPECT_EQ(tiny.caption_channels, 32);
  EXPECT_EQ(tiny.rope_freqs_per_axis(), 10);
  EXPECT_EQ(tiny.rope_pad_slots(), 2);
  EXPECT_EQ(tiny.rope_slots_per_head(), 8);
  EXPECT_THAT(tiny.ignored_keys, ::testing::Contains("audio_num_attention_heads"));
  EXPECT_THAT(tiny.ignored_keys, ::testing::Contains("cross_attn_timestep_scale_multiplier"));
  const TransformerConfig full = TransformerConfig::Preset("ltx2");
  EXPECT_EQ(full.inner_dim(), 4096);
  EXPECT_EQ(full.ffn_dim(), 16384);
  EXPECT_EQ(full.num_layers, 48);
  EXPECT_EQ(full.caption_channels, 3840);
  EXPECT_EQ(full.rope_freqs_per_axis(), 682);
  EXPECT_EQ(full.rope_pad_slots(), 2);
  EXPECT_EQ(full.vae_scale_factors, (std::array<int, 3>{8, 32, 32}));
  EXPECT_EQ(full.causal_offset, 1);
  EXPECT_EQ(full.timestep_scale_multiplier, 1000.0);
  EXPECT_THROW(TransformerConfig::Preset("ltx2.3"), ConfigError);

  for (const std::string& name : TransformerPresetNames()) {
    const TransformerConfig c = TransformerConfig::Preset(name);
    const TransformerConfig back = TransformerConfig::FromJson(c.ToJson());
    EXPECT_EQ(back.ToJson(), c.ToJson()) << name;
  }
  if (const Golden* g = LoadGolden()) {
    for (const SafetensorsFile* f : {g->weights.get(), g->forward.get(), g->offline.get(),
                                     g->stream.get()}) {
      TransformerConfig parsed = TransformerConfig::FromJson(f->Metadata("config"));
      EXPECT_EQ(parsed.name, "custom");
      parsed.name = "tiny";
      EXPECT_EQ(parsed.ToJson(), tiny.ToJson());
    }
  }
}

TEST(Ltx2RefinerConfig, RejectsWhatThePortDoesNotImplement) {
  auto error_of = [](const std::string& json) -> std::string {
    try {
      TransformerConfig::FromJson(json).Validate();
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_THAT(error_of(R"({"rope_type": "interleaved"})"), HasSubstr("rope_type 'interleaved'"));
  EXPECT_THAT(error_of(R"({"gated_attn": true})"), HasSubstr("gated_attn = true"));
  EXPECT_THAT(error_of(R"({"cross_attn_mod": true})"), HasSubstr("cross_attn_mod"));
  EXPECT_THAT(error_of(R"({"patch_size": 2})"), HasSubstr("patch_size = 2"));
  EXPECT_THAT(error_of(R"({"cross_attention_dim": 2048})"), HasSubstr("cross_attention_dim = 2048"));
  EXPECT_THAT(error_of(R"({"in_channels": 64})"), HasSubstr("out_channels = 128 must equal"));
  EXPECT_THAT(error_of(R"({"activation_fn": "gelu"})"), HasSubstr("activation_fn 'gelu'"));
  EXPECT_THAT(error_of(R"({"attention_head_dim": 15, "num_attention_heads": 1,
                           "cross_attention_dim": 15})"),
              HasSubstr("must be even"));
  // Several violations in one message.
  const std::string both = error_of(R"({"num_layers": 0, "perturbed_attn": true})");
  EXPECT_THAT(both, HasSubstr("num_layers = 0"));
  EXPECT_THAT(both, HasSubstr("perturbed_attn = true"));
  // Unknown keys, wrong types, syntax.
  EXPECT_THAT(error_of(R"({"num_layerz": 4})"), HasSubstr("unknown key 'num_layerz'"));
  EXPECT_THAT(error_of(R"({"num_layers": "48"})"), HasSubstr("'num_layers'"));
  EXPECT_THAT(error_of(R"({"vae_scale_factors": [8, 32]})"), HasSubstr("expected 3"));
  EXPECT_THAT(error_of("{"), HasSubstr("config: "));
  const TransformerConfig lax = TransformerConfig::FromJson(R"({"num_layerz": 4})",
                                                            TransformerConfig(), true);
  EXPECT_THAT(lax.ignored_keys, ::testing::ElementsAre("num_layerz"));
  EXPECT_THROW(Ltx2Transformer(TransformerConfig::FromJson(R"({"rope_type": "interleaved"})")),
               ConfigError);
}

TEST(Ltx2RefinerConfig, RefinerOptionsValidation) {
  RefinerOptions o;
  EXPECT_NO_THROW(o.Validate());
  EXPECT_EQ(o.steps(), 3);
  EXPECT_EQ(o.history_cap_frames(), 10);
  // The float32 sigma values of the reference (golden README §5.5).
  EXPECT_EQ(static_cast<double>(o.sigmas[0]), 0.909375011920929);
  EXPECT_EQ(static_cast<double>(o.sigmas[1]), 0.7250000238418579);
  auto error_of = [](const RefinerOptions& bad) -> std::string {
    try {
      bad.Validate();
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  RefinerOptions bad = o;
  bad.sigmas = {0.5f, 0.7f, 0.0f};
  EXPECT_THAT(error_of(bad), HasSubstr("must be > sigmas[1]"));
  bad.sigmas = {0.9f, 0.5f};
  EXPECT_THAT(error_of(bad), HasSubstr("must end at 0"));
  bad = o;
  bad.sink_size = 0;
  bad.kv_max_frames = -1;
  bad.fps = 0;
  const std::string all = error_of(bad);
  EXPECT_THAT(all, HasSubstr("sink_size = 0"));
  EXPECT_THAT(all, HasSubstr("kv_max_frames = -1"));
  EXPECT_THAT(all, HasSubstr("fps = 0"));
  bad = o;
  bad.block_size = 0;
  EXPECT_THAT(error_of(bad), HasSubstr("block_size = 0"));
}

// ------------------------------------------------------------------------------------------------
// Parameters and weights (spec §2.8-2.9, invariant 11)

TEST(Ltx2Transformer, ParameterCountsFromShapes) {
  const TransformerConfig full = TransformerConfig::Preset("ltx2");
  EXPECT_EQ(Ltx2Transformer::ParameterCount(full), int64_t{13041520768});
  EXPECT_EQ(Ltx2Transformer::ExpectedParameters(full).size(), 15u + 48u * 25u);
  // Spec §2.9 per-part counts.
  int64_t block0 = 0, globals = 0;
  for (const auto& [name, shape] : Ltx2Transformer::ExpectedParameters(full)) {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    if (name.rfind("transformer_blocks.0.", 0) == 0) block0 += n;
    if (name.rfind("transformer_blocks.", 0) != 0) globals += n;
  }
  EXPECT_EQ(block0, 268529664);
  EXPECT_EQ(globals, 152096896);
  EXPECT_EQ(Ltx2Transformer::ParameterCount(TransformerConfig::Preset("tiny")), 187080);
  // The constructor allocates nothing.
  const Ltx2Transformer model(full);
  EXPECT_FALSE(model.loaded());
  EXPECT_EQ(model.ParameterCount(), int64_t{13041520768});
}

TEST(Ltx2TransformerGolden, WeightsFileMatchesExpectedParameters) {
  REQUIRE_GOLDEN(g);
  EXPECT_NO_THROW(g->weights->CheckTensors(Ltx2Transformer::ExpectedParameters(g->config)));
  EXPECT_EQ(g->weights->size(), 65u);
  int64_t values = 0;
  for (const std::string& name : g->weights->names()) values += g->weights->Info(name).numel();
  EXPECT_EQ(values, g->model->ParameterCount());
  EXPECT_TRUE(g->model->Parameter("transformer_blocks.1.attn1.to_k.weight")
                  .equal(g->weights->Load("transformer_blocks.1.attn1.to_k.weight")));
  EXPECT_THROW(g->model->Parameter("transformer_blocks.2.attn1.to_k.weight"), std::out_of_range);
}

// A minimal safetensors writer (F32 only) for checkpoint-shaped files.
void WriteSafetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  std::string header = "{";
  std::string data;
  for (const auto& [name, t] : tensors) {
    const at::Tensor c = t.to(at::kFloat).contiguous();
    std::string shape = "[";
    for (int64_t i = 0; i < c.dim(); ++i) shape += (i ? "," : "") + std::to_string(c.size(i));
    shape += "]";
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(c.data_ptr<float>()),
                static_cast<size_t>(c.numel()) * sizeof(float));
    header += (header.size() > 1 ? "," : "") + sana::JsonQuote(name) +
              ":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
              std::to_string(begin) + "," + std::to_string(data.size()) + "]}";
  }
  header += "}";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  std::ofstream out(path, std::ios::binary);
  out << bytes << header << data;
}

TEST(Ltx2Transformer, FullCheckpointLoadsStrictlyIgnoringAudioKeys) {
  const TransformerConfig config = TransformerConfig::Preset("tiny");
  Ltx2Transformer reference(config);
  reference.InitDummyWeights(7);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, shape] : reference.ExpectedParameters()) {
    tensors[name] = reference.Parameter(name);
  }
  // What the public LTX-2.0 checkpoint carries besides the video path (spec §2.8).
  std::map<std::string, at::Tensor> audio = {
      {"audio_proj_in.weight", at::ones({16, 8})},
      {"audio_time_embed.linear.weight", at::ones({96, 16})},
      {"audio_caption_projection.linear_1.weight", at::ones({16, 32})},
      {"audio_scale_shift_table", at::ones({2, 16})},
      {"av_cross_attn_video_scale_shift.linear.weight", at::ones({256, 64})},
      {"av_cross_attn_audio_v2a_gate.linear.bias", at::ones({16})},
      {"transformer_blocks.0.audio_attn1.to_q.weight", at::ones({16, 16})},
      {"transformer_blocks.1.audio_ff.net.2.bias", at::ones({16})},
      {"transformer_blocks.0.audio_to_video_attn.to_k.weight", at::ones({16, 16})},
      {"transformer_blocks.1.video_to_audio_attn.to_out.0.bias", at::ones({16})},
      {"transformer_blocks.0.video_a2v_cross_attn_scale_shift_table", at::ones({5, 64})},
      {"transformer_blocks.1.audio_a2v_cross_attn_scale_shift_table", at::ones({5, 16})},
      {"transformer_blocks.0.audio_scale_shift_table", at::ones({6, 16})},
  };
  std::map<std::string, at::Tensor> full = tensors;
  full.insert(audio.begin(), audio.end());
  const std::string path = ::testing::TempDir() + "/ltx2_full_checkpoint.safetensors";
  WriteSafetensors(path, full);
  Ltx2Transformer loaded(config);
  loaded.LoadWeights(SafetensorsFile::Open(path));
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(loaded.Parameter(name).equal(t)) << name;
  }

  // Strict about everything else: one message naming every problem.
  std::map<std::string, at::Tensor> broken = full;
  broken.erase("transformer_blocks.1.ff.net.2.bias");
  broken["transformer_blocks.0.attn3.to_q.weight"] = at::ones({4});
  broken["proj_out.weight"] = at::ones({8, 32});
  WriteSafetensors(path, broken);
  try {
    Ltx2Transformer(config).LoadWeights(SafetensorsFile::Open(path));
    ADD_FAILURE() << "a broken checkpoint loaded";
  } catch (const SafetensorsError& e) {
    EXPECT_THAT(e.what(), HasSubstr("transformer_blocks.1.ff.net.2.bias"));
    EXPECT_THAT(e.what(), HasSubstr("transformer_blocks.0.attn3.to_q.weight"));
    EXPECT_THAT(e.what(), HasSubstr("proj_out.weight"));
  }
  std::remove(path.c_str());
}

TEST(Ltx2Transformer, DummyWeightsFollowTheGoldenInitRules) {
  const TransformerConfig config = TransformerConfig::Preset("tiny");
  Ltx2Transformer a(config), b(config), c(config);
  a.InitDummyWeights(11);
  b.InitDummyWeights(11);
  c.InitDummyWeights(12);
  EXPECT_TRUE(a.Parameter("proj_in.weight").equal(b.Parameter("proj_in.weight")));
  EXPECT_FALSE(a.Parameter("proj_in.weight").equal(c.Parameter("proj_in.weight")));
  // Different tensors get different draws.
  EXPECT_FALSE(a.Parameter("transformer_blocks.0.attn1.to_q.weight")
                   .equal(a.Parameter("transformer_blocks.0.attn2.to_q.weight")));
  // N(0,1)/sqrt(fan_in): the FFN input (256 x 64) has std 1/8.
  const double ff_std = a.Parameter("transformer_blocks.0.ff.net.0.proj.weight").std().item<double>();
  EXPECT_NEAR(ff_std, 1.0 / 8.0, 0.01);
  // Biases 0.1 N(0,1), norm weights 1 + 0.1 N(0,1), tables N(0,1)/sqrt(64).
  EXPECT_NEAR(a.Parameter("time_embed.linear.bias").std().item<double>(), 0.1, 0.02);
  EXPECT_NEAR(a.Parameter("transformer_blocks.1.attn2.norm_k.weight").mean().item<double>(), 1.0,
              0.05);
  EXPECT_NEAR(a.Parameter("transformer_blocks.0.scale_shift_table").std().item<double>(), 0.125,
              0.02);
  EXPECT_EQ(a.WeightBytes(), 187080 * 4);
}

// ------------------------------------------------------------------------------------------------
// RoPE (spec §2.4, golden README §5.1, invariants 12-13)

TEST(Ltx2TransformerGolden, RopeTablesAndCoordinates) {
  REQUIRE_GOLDEN(g);
  const SafetensorsFile& f = *g->forward;
  const Ltx2RopeTable table = BuildRopeTable(g->config, FrameRange(0, 4), 2, 3, 16.0);
  EXPECT_TRUE(Close(table.CosBhnr(2), f.Load("inter.rope_cos"), kRopeAbsTol,
                    "inter.rope:inter.rope_cos", true));
  EXPECT_TRUE(Close(table.SinBhnr(2), f.Load("inter.rope_sin"), kRopeAbsTol,
                    "inter.rope:inter.rope_sin", true));
  const at::Tensor coords = RopeCoordinates(g->config, FrameRange(0, 4), 2, 3, 16.0);
  EXPECT_TRUE(Close(coords.unsqueeze(0).expand({2, 3, 24, 2}), f.Load("inter.rope_coords"), 0,
                    "inter.rope:inter.rope_coords", true));
  // Tables for absolute frame lists (the streaming sink and blocks).
  const SafetensorsFile& s = *g->stream;
  for (const auto& [name, frames] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"0", {0}}, {"3", {3}}, {"1_2_3", {1, 2, 3}}, {"4_5_6", {4, 5, 6}},
           {"7_8_9", {7, 8, 9}}}) {
    const Ltx2RopeTable t = BuildRopeTable(g->config, frames, 2, 3, 16.0);
    const std::string p = "rope.frames_" + name;
    EXPECT_TRUE(Close(t.CosBhnr(1), s.Load(p + ".cos"), kRopeAbsTol, "rope.*:" + p + ".cos", true));
    EXPECT_TRUE(Close(t.SinBhnr(1), s.Load(p + ".sin"), kRopeAbsTol, "rope.*:" + p + ".sin", true));
  }
  // Absolute frames 1, 2, 3 are the contiguous grid's rows (README §6).
  EXPECT_TRUE(BuildRopeTable(g->config, {1, 2, 3}, 2, 3, 16.0)
                  .cos.equal(table.cos.narrow(0, 6, 18)));
}

TEST(Ltx2Transformer, RopeGeometry) {
  const TransformerConfig c = TransformerConfig::Preset("tiny");
  const Ltx2RopeTable t = BuildRopeTable(c, {0, 5}, 2, 3, 16.0);
  ASSERT_EQ(t.cos.sizes(), (c10::IntArrayRef{12, 4, 8}));
  // Head 0 starts with the two identity slots (cos 1, sin 0) for every token.
  EXPECT_TRUE(t.cos.select(1, 0).narrow(1, 0, 2).eq(1).all().item<bool>());
  EXPECT_TRUE(t.sin.select(1, 0).narrow(1, 0, 2).eq(0).all().item<bool>());
  // Slot 2 + 3k + axis: the time slots change with the frame, the height / width slots do not.
  const at::Tensor flat = t.cos.reshape({12, 32});
  EXPECT_FALSE(flat[0][2].equal(flat[6][2]));  // time, frames 0 vs 5
  EXPECT_TRUE(flat[0][3].equal(flat[6][3]));   // height, same row
  EXPECT_TRUE(flat[0][4].equal(flat[6][4]));   // width, same column
  EXPECT_FALSE(flat[0][3].equal(flat[3][3]));  // height, rows 0 vs 1
  // Coordinates: frame 0 covers pixel frame [0, 1), frame f >= 1 covers [8f - 7, 8f + 1), / fps.
  const at::Tensor coords = RopeCoordinates(c, {0, 5}, 2, 3, 16.0);
  EXPECT_FLOAT_EQ(coords[0][0][0].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(coords[0][0][1].item<float>(), 1.0f / 16.0f);
  EXPECT_FLOAT_EQ(coords[0][6][0].item<float>(), 33.0f / 16.0f);
  EXPECT_FLOAT_EQ(coords[0][6][1].item<float>(), 41.0f / 16.0f);
  EXPECT_FLOAT_EQ(coords[2][5][0].item<float>(), 64.0f);  // width index 2
  EXPECT_THROW(BuildRopeTable(c, {}, 2, 3, 16.0), InvalidInputError);
  EXPECT_THROW(BuildRopeTable(c, {-1}, 2, 3, 16.0), InvalidInputError);
  EXPECT_THROW(BuildRopeTable(c, {0}, 2, 3, 0.0), InvalidInputError);
}

TEST(Ltx2Transformer, RopeIsARotationPerHead) {
  const TransformerConfig c = TransformerConfig::Preset("tiny");
  const Ltx2RopeTable t = BuildRopeTable(c, {0, 1, 7, 120}, 3, 4, 16.0);  // up to 60 s
  const at::Tensor x = Randn({2, t.tokens(), c.inner_dim()}, 1);
  const at::Tensor y = ApplySplitRope(x, t);
  const at::Tensor nx = x.view({2, -1, 4, 16}).norm(2, -1), ny = y.view({2, -1, 4, 16}).norm(2, -1);
  EXPECT_TRUE(Near(ny, nx, 1e-6, "per-head norm"));
  EXPECT_GT(RelErr(y, x), 0.1);  // it does rotate
  // The identity slots pass through: head 0, pairs 0 and 1.
  EXPECT_TRUE(y.view({2, -1, 4, 2, 8}).select(2, 0).narrow(3, 0, 2).equal(
      x.view({2, -1, 4, 2, 8}).select(2, 0).narrow(3, 0, 2)));
}

TEST(Ltx2Transformer, SelfAttentionDependsOnlyOnRelativeTime) {
  // Invariant 13: shifting every frame by k frames (8k / fps seconds) leaves the forward
  // unchanged. Frames >= 1 (frame 0's clamp breaks it) and float64 angles (the reference's float32
  // angles carry ~1e-3 rad of rounding at these frequencies).
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 3);
  const at::Tensor tokens = Randn({1, 4 * 6, 8}, 4);
  const Ltx2Timesteps ts = Ltx2Timesteps::Uniform(at::full({1}, 725.0), 24);
  const at::Tensor base =
      model->Forward(tokens, ts, model->Rope({1, 2, 3, 4}, 2, 3, 16.0, RopeAngles::kFloat64), text)
          .velocity;
  const at::Tensor shifted =
      model->Forward(tokens, ts, model->Rope({38, 39, 40, 41}, 2, 3, 16.0, RopeAngles::kFloat64), text)
          .velocity;
  EXPECT_TRUE(Near(shifted, base, 1e-5, "time-shifted forward"));
  // A different spacing is not the same geometry.
  const at::Tensor spread =
      model->Forward(tokens, ts, model->Rope({1, 3, 5, 7}, 2, 3, 16.0, RopeAngles::kFloat64), text)
          .velocity;
  EXPECT_GT(RelErr(spread, base), 1e-3);
}

// ------------------------------------------------------------------------------------------------
// Forward golden parity (README §3.1)

class Ltx2ForwardGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_ = LoadGolden();
    if (!g_) {
      GTEST_SKIP() << "golden data not found in " << GoldenDir(kGoldenName)
                   << " (set WMSERVE_GOLDEN_ROOT to the folder holding " << kGoldenName << ")";
    }
    f_ = g_->forward.get();
    tokens_ = f_->Load("input.hidden_states");
    text_ = g_->model->PrepareText(f_->Load("input.encoder_hidden_states"),
                                   f_->Load("input.encoder_attention_mask"));
    rope_ = g_->model->Rope(FrameRange(0, 4), 2, 3, 16.0);
  }
  // The README's per-sample sigmas as grouped timesteps: sink at 0, current at sigma_b * 1000.
  Ltx2Timesteps Grouped() const {
    at::Tensor v = at::zeros({2, 2});
    v.select(1, 1).copy_(f_->Load("input.sigma").mul(1000.0));
    return Ltx2Timesteps::Grouped(v, {6, 18});
  }
  Ltx2ForwardOptions SinkPattern() const {
    Ltx2ForwardOptions o;
    o.pattern = AttentionPattern::kSinkCurrent;
    o.n_context_tokens = 6;
    return o;
  }

  const Golden* g_ = nullptr;
  const SafetensorsFile* f_ = nullptr;
  at::Tensor tokens_;
  Ltx2TextContext text_;
  Ltx2RopeTable rope_;
};

TEST_F(Ltx2ForwardGoldenTest, PerTokenTimestepsAndEveryIntermediate) {
  EXPECT_TRUE(PackLatentTokens(f_->Load("input.latents")).equal(tokens_));
  EXPECT_FALSE(text_.bias.defined());  // all-ones mask is dropped
  std::map<std::string, at::Tensor> taps;
  Ltx2ForwardOptions o = SinkPattern();
  o.tap = [&](const std::string& name, const at::Tensor& v) { taps[name] = v.clone(); };
  const at::Tensor velocity =
      g_->model->Forward(tokens_, Ltx2Timesteps::PerToken(f_->Load("input.timestep")), rope_, text_, o)
          .velocity;
  EXPECT_TRUE(Close(velocity, f_->Load("output.velocity"), kOutputTol, "output.*:output.velocity"));
  // x0 = tokens - velocity * sigma_token (sink rows: sigma 0).
  const at::Tensor sigma_token = f_->Load("input.timestep").div(1000.0).unsqueeze(-1);
  EXPECT_TRUE(Close(tokens_.sub(velocity.mul(sigma_token)), f_->Load("output.x0_tokens"),
                    kOutputTol, "output.*:output.x0_tokens"));
  EXPECT_TRUE(Close(taps["inter.timestep_sinusoid"], f_->Load("inter.timestep_sinusoid"),
                    kSinusoidAbsTol, "inter.timestep_sinusoid:inter.timestep_sinusoid", true));
  for (const char* name : {"inter.proj_in", "inter.temb", "inter.embedded_timestep",
                           "inter.norm_out"}) {
    EXPECT_TRUE(Close(taps[name], f_->Load(name), kOutputTol, std::string("inter.*:") + name));
  }
  EXPECT_TRUE(Close(text_.projected, f_->Load("inter.caption_projection"), kOutputTol,
                    "inter.*:inter.caption_projection"));
  for (int i = 0; i < 2; ++i) {
    for (const char* part : {"attn1_in", "attn1_k_pre_rope", "attn1_k_post_rope", "attn1_v",
                             "attn1_out", "attn2_in", "attn2_out", "ff_in", "ff_out", "out"}) {
      const std::string name = "block." + std::to_string(i) + "." + part;
      EXPECT_TRUE(Close(taps[name], f_->Load(name), kOutputTol, "block.*:" + name));
    }
  }
}

TEST_F(Ltx2ForwardGoldenTest, GroupedTimestepsMatchTheReference) {
  // Invariant 19 on the golden: the modulation computed once per (sample, group) equals the
  // reference's per-token one.
  std::map<std::string, at::Tensor> taps;
  Ltx2ForwardOptions o = SinkPattern();
  o.tap = [&](const std::string& name, const at::Tensor& v) { taps[name] = v.clone(); };
  const at::Tensor velocity = g_->model->Forward(tokens_, Grouped(), rope_, text_, o).velocity;
  EXPECT_TRUE(Close(velocity, f_->Load("output.velocity"), kOutputTol,
                    "output.*:output.velocity (grouped)"));
  EXPECT_EQ(taps["inter.temb"].sizes(), (c10::IntArrayRef{4, 384}));  // B x G rows, not B x N
}

TEST_F(Ltx2ForwardGoldenTest, FullAttentionAndTextPaddingVariants) {
  Ltx2ForwardOptions full;  // n_context_tokens = 0: plain bidirectional attention
  EXPECT_TRUE(Close(g_->model->Forward(tokens_, Grouped(), rope_, text_, full).velocity,
                    f_->Load("output.velocity_full_attention"), kOutputTol,
                    "output.*:output.velocity_full_attention"));
  const Ltx2TextContext padded = g_->model->PrepareText(f_->Load("input.encoder_hidden_states"),
                                                        f_->Load("input.encoder_attention_mask_pad"));
  ASSERT_TRUE(padded.bias.defined());
  EXPECT_EQ(padded.bias.sizes(), (c10::IntArrayRef{2, 1, 1, 16}));
  EXPECT_TRUE(Close(g_->model->Forward(tokens_, Grouped(), rope_, padded, SinkPattern()).velocity,
                    f_->Load("output.velocity_text_pad"), kOutputTol,
                    "output.*:output.velocity_text_pad"));
}

TEST_F(Ltx2ForwardGoldenTest, PredictCurrentX0) {
  // `_predict_current_x0(sink, noisy_current, sigma)`: both samples at sigma, x0 of the current
  // tokens.
  const float sigma = f_->Load("input.predict_x0.sigma").item<float>();
  EXPECT_EQ(sigma, RefinerOptions().sigmas[0]);
  const at::Tensor velocity =
      g_->model
          ->Forward(tokens_, SinkAndCurrent(2, 6, 18, static_cast<float>(sigma * 1000.0)), rope_,
                    text_, SinkPattern())
          .velocity;
  const at::Tensor x0 = X0FromVelocity(tokens_.narrow(1, 6, 18), velocity.narrow(1, 6, 18), sigma);
  EXPECT_TRUE(Close(x0, f_->Load("output.predict_x0.current"), kOutputTol,
                    "output.*:output.predict_x0.current"));
}

TEST_F(Ltx2ForwardGoldenTest, SinkRowsEqualTheSinkAlone) {
  // README §5.3: the sink rows of the sink/current forward are the forward of the sink frame alone.
  const at::Tensor both = g_->model->Forward(tokens_, Grouped(), rope_, text_, SinkPattern()).velocity;
  const at::Tensor alone =
      g_->model
          ->Forward(tokens_.narrow(1, 0, 6), Ltx2Timesteps::Uniform(at::zeros({2}), 6),
                    g_->model->Rope({0}, 2, 3, 16.0), text_)
          .velocity;
  EXPECT_TRUE(Near(both.narrow(1, 0, 6), alone, 1e-6, "sink rows"));
}

// ------------------------------------------------------------------------------------------------
// Offline refinement golden parity (README §3.2)

TEST(Ltx2RefinerGolden, OfflineEveryStep) {
  REQUIRE_GOLDEN(g);
  const SafetensorsFile& f = *g->offline;
  RefinerOptions options;
  ASSERT_TRUE(f.Load("input.sigmas").equal(at::tensor(options.sigmas)));
  const Ltx2TextContext text =
      g->model->PrepareText(f.Load("input.encoder_hidden_states"), f.Load("input.encoder_attention_mask"));
  std::map<std::string, at::Tensor> taps;
  std::vector<int> steps;
  const at::Tensor refined = RefineOffline(
      *g->model, f.Load("input.z"), f.Load("input.eps"), text, options,
      [&](int step) {
        steps.push_back(step);
        return true;
      },
      [&](const std::string& name, const at::Tensor& v) { taps[name] = v.clone(); });
  EXPECT_THAT(steps, ::testing::ElementsAre(0, 1, 2));
  for (int k = 0; k < 3; ++k) {
    for (const char* part : {".x_t", ".x0"}) {
      const std::string name = "step." + std::to_string(k) + part;
      EXPECT_TRUE(Close(taps[name], f.Load(name), kOutputTol, "step.*:" + name));
    }
  }
  EXPECT_TRUE(Close(refined, f.Load("output.refined"), kOutputTol, "output.*:refine_offline.output.refined"));
  // The sink frame comes back unchanged.
  EXPECT_TRUE(refined.narrow(2, 0, 1).equal(f.Load("input.z").narrow(2, 0, 1)));
}

// ------------------------------------------------------------------------------------------------
// Streaming refinement golden parity (README §3.3)

TEST(Ltx2RefinerGolden, StreamingEveryBlock) {
  REQUIRE_GOLDEN(g);
  const SafetensorsFile& f = *g->stream;
  RefinerOptions options;
  options.kv_max_frames = 4;  // history cap 3 frames (README §3.3)
  const at::Tensor z = f.Load("input.z");
  const Ltx2TextContext text =
      g->model->PrepareText(f.Load("input.encoder_hidden_states"), f.Load("input.encoder_attention_mask"));
  RefinerChunkRunner runner(g->model, text, options);
  runner.CaptureSink(z.narrow(2, 0, 1));
  for (int l = 0; l < 2; ++l) {
    const std::string p = "sink.layer" + std::to_string(l) + ".";
    EXPECT_TRUE(Close(runner.sink_kv()[static_cast<size_t>(l)].k, f.Load(p + "k_pre_rope"),
                      kOutputTol, "sink.*:" + p + "k_pre_rope"));
    EXPECT_TRUE(Close(runner.sink_kv()[static_cast<size_t>(l)].v, f.Load(p + "v"), kOutputTol,
                      "sink.*:" + p + "v"));
  }

  const sana::JsonValue blocks = sana::ParseJson(f.Metadata("blocks"));
  ASSERT_EQ(blocks.AsArray().size(), 3u);
  std::vector<at::Tensor> outputs = {z.narrow(2, 0, 1)};
  for (int b = 0; b < 3; ++b) {
    const sana::JsonValue& meta = blocks.AsArray()[static_cast<size_t>(b)];
    const int64_t start = meta.At("frames").AsArray()[0].AsInt();
    EXPECT_EQ(runner.next_block_start(), start);
    EXPECT_EQ(runner.history_frames(), meta.At("history_frames_before").AsInt());
    EXPECT_EQ(runner.next_sink_rope_offset(), meta.At("sink_rope_offset").AsInt());
    std::map<std::string, at::Tensor> taps;
    std::vector<int> steps;
    const std::string pb = "block" + std::to_string(b) + ".";
    const at::Tensor out = runner.RefineBlock(
        z.narrow(2, start, 3), f.Load("input.eps." + pb.substr(0, pb.size() - 1)),
        [&](int step) {
          steps.push_back(step);
          return true;
        },
        [&](const std::string& name, const at::Tensor& v) { taps[name] = v.clone(); });
    EXPECT_THAT(steps, ::testing::ElementsAre(0, 1, 2, 3));
    for (int k = 0; k < 3; ++k) {
      for (const char* part : {".x_t", ".x0"}) {
        const std::string name = "step" + std::to_string(k) + part;
        EXPECT_TRUE(Close(taps[name], f.Load(pb + name), kOutputTol, "block{b}.step*:" + pb + name));
      }
    }
    const std::vector<Ltx2LayerKv> history = runner.History();
    for (int l = 0; l < 2; ++l) {
      const std::string pc = "capture.layer" + std::to_string(l) + ".";
      EXPECT_TRUE(Close(taps[pc + "k_post_rope"], f.Load(pb + pc + "k_post_rope"), kOutputTol,
                        "block{b}.capture:" + pb + pc + "k_post_rope"));
      EXPECT_TRUE(Close(taps[pc + "v"], f.Load(pb + pc + "v"), kOutputTol,
                        "block{b}.capture:" + pb + pc + "v"));
      const std::string ph = "history_after.layer" + std::to_string(l) + ".";
      EXPECT_TRUE(Close(history[static_cast<size_t>(l)].k, f.Load(pb + ph + "k"), kOutputTol,
                        "block{b}.history_after:" + pb + ph + "k"));
      EXPECT_TRUE(Close(history[static_cast<size_t>(l)].v, f.Load(pb + ph + "v"), kOutputTol,
                        "block{b}.history_after:" + pb + ph + "v"));
    }
    EXPECT_EQ(runner.history_frames(), meta.At("history_frames_after").AsInt());
    EXPECT_TRUE(Close(out, f.Load(pb + "output"), kOutputTol, "block{b}.output:" + pb + "output"));
    outputs.push_back(out);
  }
  EXPECT_TRUE(Close(at::cat(outputs, 2), f.Load("output.refined"), kOutputTol,
                    "output.*:refine_stream.output.refined"));
}

// ------------------------------------------------------------------------------------------------
// Invariants (spec §5)

TEST(Ltx2Transformer, SinkSplitEqualsMaskedAttention) {
  // Invariant 14: the two SDPA calls equal one SDPA with a mask blocking sink -> current.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 2, 5);
  const at::Tensor tokens = Randn({2, 24, 8}, 6);
  const Ltx2Timesteps ts = SinkAndCurrent(2, 6, 18, 909.375);
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 4), 2, 3, 16.0);
  Ltx2ForwardOptions split;
  split.pattern = AttentionPattern::kSinkCurrent;
  split.n_context_tokens = 6;
  const at::Tensor a = model->Forward(tokens, ts, rope, text, split).velocity;
  at::Tensor keep = at::ones({24, 24}, at::kBool);
  keep.narrow(0, 0, 6).narrow(1, 6, 18).fill_(false);
  Ltx2ForwardOptions masked;
  masked.self_attention_mask = keep;
  EXPECT_TRUE(Near(model->Forward(tokens, ts, rope, text, masked).velocity, a, kInvariantTol,
                   "bool mask"));
  // The additive form of the same mask, per batch.
  masked.self_attention_mask =
      at::zeros({2, 1, 24, 24}).masked_fill(keep.logical_not(), -1e9);
  EXPECT_TRUE(Near(model->Forward(tokens, ts, rope, text, masked).velocity, a, kInvariantTol,
                   "additive mask"));
  // And it is not the plain forward.
  EXPECT_GT(RelErr(model->Forward(tokens, ts, rope, text).velocity, a), 1e-4);
}

TEST(Ltx2Transformer, TrivialStreamingCaseEqualsThePlainForward) {
  // Invariant 15: a kPrefix forward with an empty prefix at positions 0..n-1 is the plain forward;
  // its post-RoPE capture equals the plain forward's.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 7);
  const at::Tensor tokens = Randn({1, 18, 8}, 8);
  const Ltx2Timesteps ts = Ltx2Timesteps::Uniform(at::full({1}, 421.875), 18);
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 3), 2, 3, 16.0);
  Ltx2ForwardOptions plain;
  plain.capture = KvCapture::kPostRope;
  const Ltx2ForwardResult a = model->Forward(tokens, ts, rope, text, plain);
  std::vector<Ltx2LayerKv> workspace(2);
  for (Ltx2LayerKv& kv : workspace) {
    kv.k = at::full({1, 30, 64}, std::nan(""));  // larger than needed; only rows [0, 18) are used
    kv.v = at::full({1, 30, 64}, std::nan(""));
  }
  Ltx2ForwardOptions prefix;
  prefix.pattern = AttentionPattern::kPrefix;
  prefix.kv_workspace = &workspace;
  prefix.prefix_tokens = 0;
  prefix.capture = KvCapture::kPostRope;
  const Ltx2ForwardResult b = model->Forward(tokens, ts, rope, text, prefix);
  EXPECT_TRUE(Near(b.velocity, a.velocity, kInvariantTol, "velocity"));
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(Near(b.captured[l].k, a.captured[l].k, kInvariantTol, "k"));
    EXPECT_TRUE(Near(b.captured[l].v, a.captured[l].v, kInvariantTol, "v"));
    EXPECT_TRUE(workspace[l].k.narrow(1, 18, 12).isnan().all().item<bool>());  // untouched
  }
  // A capture-only forward yields the same K/V without a velocity.
  prefix.skip_output = true;
  const Ltx2ForwardResult c = model->Forward(tokens, ts, rope, text, prefix);
  EXPECT_FALSE(c.velocity.defined());
  EXPECT_TRUE(Near(c.captured[1].k, a.captured[1].k, kInvariantTol, "capture-only k"));
}

TEST(Ltx2Transformer, SinkReRopeIdentity) {
  // Invariant 16: RoPE(pre-RoPE sink K, position 0) == the post-RoPE capture at position 0.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 9);
  const at::Tensor sink = Randn({1, 6, 8}, 10);
  const Ltx2Timesteps ts = Ltx2Timesteps::Uniform(at::zeros({1}), 6);
  const Ltx2RopeTable rope0 = model->Rope({0}, 2, 3, 16.0);
  Ltx2ForwardOptions pre, post;
  pre.capture = KvCapture::kPreRope;
  post.capture = KvCapture::kPostRope;
  pre.skip_output = post.skip_output = true;
  const auto a = model->Forward(sink, ts, rope0, text, pre).captured;
  const auto b = model->Forward(sink, ts, rope0, text, post).captured;
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(Near(ApplySplitRope(a[l].k, rope0), b[l].k, 1e-6, "re-RoPE'd sink K"));
    EXPECT_TRUE(a[l].v.equal(b[l].v));
    EXPECT_GT(RelErr(a[l].k, b[l].k), 1e-3);  // position 0 is not the identity
  }
}

TEST(Ltx2Transformer, TextKvCacheEqualsUncached) {
  // Invariant 17, with and without a padding mask.
  const auto model = TinyModel();
  const at::Tensor text = Randn({2, 16, 32}, 11);
  at::Tensor mask = at::ones({2, 16}, at::kLong);
  mask[1].narrow(0, 0, 5).fill_(0);
  const at::Tensor tokens = Randn({2, 24, 8}, 12);
  const Ltx2Timesteps ts = SinkAndCurrent(2, 6, 18, 725.0);
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 4), 2, 3, 16.0);
  for (const at::Tensor& m : {at::Tensor(), mask}) {
    const Ltx2TextContext cached = model->PrepareText(text, m, true);
    const Ltx2TextContext uncached = model->PrepareText(text, m, false);
    EXPECT_TRUE(cached.cached());
    EXPECT_FALSE(uncached.cached());
    EXPECT_GT(cached.bytes(), uncached.bytes());
    EXPECT_TRUE(Near(model->Forward(tokens, ts, rope, cached).velocity,
                     model->Forward(tokens, ts, rope, uncached).velocity, 1e-6, "cached text K/V"));
  }
}

TEST(Ltx2Refiner, EulerFormsAgreeAndTheOracleReturnsZ) {
  // Invariant 18.
  const std::vector<float> sigmas = RefinerOptions().sigmas;
  const at::Tensor x = Randn({2, 8, 3, 2, 3}, 13), x0 = Randn({2, 8, 3, 2, 3}, 14);
  for (size_t k = 0; k + 1 < sigmas.size(); ++k) {
    EXPECT_TRUE(Near(EulerStepVelocityForm(x, x0, sigmas[k], sigmas[k + 1]),
                     EulerStepRatioForm(x, x0, sigmas[k], sigmas[k + 1]), 1e-6, "Euler forms"));
  }
  EXPECT_TRUE(EulerStepRatioForm(x, x0, 0.421875f, 0.0f).equal(x0));
  // Renoise to sigma_0 and step with the oracle velocity v = eps - z: back to z.
  const at::Tensor z = Randn({1, 8, 3, 2, 3}, 15), eps = Randn({1, 8, 3, 2, 3}, 16);
  for (const bool ratio : {false, true}) {
    at::Tensor xt = Renoise(z, eps, sigmas[0]);
    for (size_t k = 0; k + 1 < sigmas.size(); ++k) {
      const at::Tensor predicted = X0FromVelocity(xt, eps.sub(z), sigmas[k]);
      EXPECT_TRUE(Near(predicted, z, 1e-6, "oracle x0"));
      xt = ratio ? EulerStepRatioForm(xt, predicted, sigmas[k], sigmas[k + 1])
                 : EulerStepVelocityForm(xt, predicted, sigmas[k], sigmas[k + 1]);
    }
    EXPECT_LE(AbsErr(xt, z), 2e-6) << (ratio ? "ratio form" : "velocity form");
  }
}

TEST(Ltx2Transformer, PerTokenTimestepsEqualGroupedAndPerSample) {
  // Invariant 19: uniform per-token timesteps == a per-sample value broadcast; sink tokens at
  // t = 0 get the t = 0 modulation; a three-group layout == its per-token expansion.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 2, 17);
  const at::Tensor tokens = Randn({2, 24, 8}, 18);
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 4), 2, 3, 16.0);
  const at::Tensor per_sample = at::tensor({909.375f, 421.875f});
  const at::Tensor a =
      model->Forward(tokens, Ltx2Timesteps::PerToken(per_sample.unsqueeze(1).expand({2, 24}).contiguous()),
                     rope, text)
          .velocity;
  const at::Tensor b = model->Forward(tokens, Ltx2Timesteps::Uniform(per_sample, 24), rope, text).velocity;
  EXPECT_TRUE(Near(b, a, kInvariantTol, "uniform"));
  const at::Tensor groups = at::tensor({0.0f, 725.0f, 300.5f, 0.0f, 909.375f, 12.25f}).view({2, 3});
  const std::vector<int64_t> lengths = {6, 12, 6};
  at::Tensor expanded = at::empty({2, 24});
  for (int64_t i = 0, start = 0; i < 3; start += lengths[static_cast<size_t>(i)], ++i) {
    expanded.narrow(1, start, lengths[static_cast<size_t>(i)])
        .copy_(groups.select(1, i).unsqueeze(1).expand({2, lengths[static_cast<size_t>(i)]}));
  }
  EXPECT_TRUE(Near(model->Forward(tokens, Ltx2Timesteps::Grouped(groups, lengths), rope, text).velocity,
                   model->Forward(tokens, Ltx2Timesteps::PerToken(expanded), rope, text).velocity,
                   kInvariantTol, "three groups"));
}

TEST(Ltx2Refiner, HistoryTrimmingAndTheKvWindow) {
  // Invariant 21 with a cap that is not a multiple of the block size (cap 4, blocks of 3), so the
  // trim keeps part of the older history: after b blocks the history holds min(3b, 4) frames,
  // the sink offset is block_start - history - 1, the prefix never exceeds kv_max_frames frames
  // and the runner's memory does not grow.
  const auto model = TinyModel();
  RefinerOptions options;
  options.kv_max_frames = 5;
  RefinerChunkRunner runner(model, RandomText(*model, 1, 19), options);
  runner.CaptureSink(Randn({1, 8, 1, 2, 3}, 20));
  const int64_t state = runner.StateBytes();
  std::vector<at::Tensor> captured_k, captured_v;  // layer 1, per frame
  std::vector<int64_t> offsets;
  for (int b = 0; b < 6; ++b) {
    offsets.push_back(runner.next_sink_rope_offset());
    EXPECT_EQ(runner.next_sink_rope_offset(),
              runner.next_block_start() - runner.history_frames() - 1);
    runner.RefineBlock(Randn({1, 8, 3, 2, 3}, 100 + static_cast<uint64_t>(b)), RefinerStepCallback(),
                       [&](const std::string& name, const at::Tensor& v) {
                         for (int f = 0; f < 3; ++f) {
                           if (name == "capture.layer1.k_post_rope") captured_k.push_back(v.narrow(1, 6 * f, 6).clone());
                           if (name == "capture.layer1.v") captured_v.push_back(v.narrow(1, 6 * f, 6).clone());
                         }
                       });
    const int64_t expected = std::min<int64_t>(3 * (b + 1), 4);
    EXPECT_EQ(runner.history_frames(), expected) << "block " << b;
    EXPECT_LE(options.sink_size + runner.history_frames(), options.kv_max_frames);
    EXPECT_EQ(runner.HistoryBytes(), expected * 6 * 64 * 2 * 2 * 4);
    EXPECT_EQ(runner.StateBytes(), state);
    // The history is the last `expected` captured frames, oldest first.
    const std::vector<Ltx2LayerKv> history = runner.History();
    const size_t n = captured_k.size();
    ASSERT_EQ(captured_v.size(), n);
    std::vector<at::Tensor> last_k(captured_k.end() - expected, captured_k.end());
    std::vector<at::Tensor> last_v(captured_v.end() - expected, captured_v.end());
    EXPECT_TRUE(history[1].k.equal(at::cat(last_k, 1))) << "block " << b;
    EXPECT_TRUE(history[1].v.equal(at::cat(last_v, 1))) << "block " << b;
  }
  // Block starts 1, 4, 7, ...: offsets 0, 0 (history 3), then start - 4 - 1.
  EXPECT_THAT(offsets, ::testing::ElementsAre(0, 0, 2, 5, 8, 11));
  EXPECT_EQ(runner.frames_refined(), 18);
  // The canonical geometry: history min(3b, 10), offsets 0, 0, 0, 0, 2, 5.
  RefinerChunkRunner canonical(model, RandomText(*model, 1, 19), RefinerOptions());
  canonical.CaptureSink(Randn({1, 8, 1, 2, 3}, 20));
  std::vector<int64_t> canonical_offsets, histories;
  for (int b = 0; b < 6; ++b) {
    canonical_offsets.push_back(canonical.next_sink_rope_offset());
    canonical.RefineBlock(Randn({1, 8, 3, 2, 3}, 200 + static_cast<uint64_t>(b)));
    histories.push_back(canonical.history_frames());
  }
  EXPECT_THAT(canonical_offsets, ::testing::ElementsAre(0, 0, 0, 0, 2, 5));
  EXPECT_THAT(histories, ::testing::ElementsAre(3, 6, 9, 10, 10, 10));
}

TEST(Ltx2Refiner, StreamingEqualsABlockCausalForward) {
  // With a window at least as long as the video (no trimming, sink offset 0), block 1's denoising
  // forwards equal one forward over [sink, refined block 0, noisy block 1] with a block-causal
  // mask (sink -> sink; block 0 -> sink + block 0; block 1 -> everything) and timesteps
  // [0, 0, sigma]: the sink's and block 0's keys are then exactly the captured prefix.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 21);
  const at::Tensor z = Randn({1, 8, 7, 2, 3}, 22);
  const at::Tensor eps0 = Randn({1, 8, 3, 2, 3}, 23), eps1 = Randn({1, 8, 3, 2, 3}, 24);
  RefinerChunkRunner runner(model, text, RefinerOptions());
  runner.CaptureSink(z.narrow(2, 0, 1));
  const at::Tensor out0 = runner.RefineBlock(z.narrow(2, 1, 3), eps0);
  std::vector<Ltx2LayerKv> history0;
  for (const Ltx2LayerKv& kv : runner.History()) history0.push_back({kv.k.clone(), kv.v.clone()});
  std::map<std::string, at::Tensor> taps;
  runner.RefineBlock(z.narrow(2, 4, 3), eps1, RefinerStepCallback(),
                     [&](const std::string& name, const at::Tensor& v) { taps[name] = v.clone(); });

  at::Tensor keep = at::zeros({42, 42}, at::kBool);
  keep.narrow(0, 0, 6).narrow(1, 0, 6).fill_(true);
  keep.narrow(0, 6, 18).narrow(1, 0, 24).fill_(true);
  keep.narrow(0, 24, 18).fill_(true);
  Ltx2ForwardOptions block_causal;
  block_causal.self_attention_mask = keep;
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 7), 2, 3, 16.0);
  const RefinerOptions o;
  for (int k = 0; k < 3; ++k) {
    const at::Tensor x_t = taps["step" + std::to_string(k) + ".x_t"];
    const at::Tensor joint = PackLatentTokens(at::cat({z.narrow(2, 0, 1), out0, x_t}, 2));
    at::Tensor values = at::zeros({1, 3});
    values[0][2] = static_cast<float>(static_cast<double>(o.sigmas[static_cast<size_t>(k)]) * 1000.0);
    std::map<std::string, at::Tensor> joint_taps;
    block_causal.tap = [&](const std::string& name, const at::Tensor& v) {
      if (name.find("attn1_k_post_rope") != std::string::npos) joint_taps[name] = v.clone();
    };
    const at::Tensor v = model->Forward(joint, Ltx2Timesteps::Grouped(values, {6, 18, 18}), rope,
                                        text, block_causal)
                             .velocity;
    const at::Tensor x0 = UnpackLatentTokens(
        X0FromVelocity(joint.narrow(1, 24, 18), v.narrow(1, 24, 18), o.sigmas[static_cast<size_t>(k)]),
        3, 2, 3);
    EXPECT_TRUE(Near(x0, taps["step" + std::to_string(k) + ".x0"], kInvariantTol,
                     "block 1 x0 at step " + std::to_string(k)));
    // Block 0's rows of the joint forward carry exactly the captured history keys.
    for (int l = 0; l < 2; ++l) {
      EXPECT_TRUE(Near(joint_taps["block." + std::to_string(l) + ".attn1_k_post_rope"].narrow(1, 6, 18),
                       history0[static_cast<size_t>(l)].k, kInvariantTol, "history K"));
    }
  }
}

TEST(Ltx2Refiner, SingleBlockStreamingEqualsOffline) {
  // When the current frames form exactly one block, the streaming block sees [sink at position 0,
  // itself] — the offline sink/current pattern — so both modes refine identically.
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 25);
  const at::Tensor z = Randn({1, 8, 4, 2, 3}, 26), eps = Randn({1, 8, 3, 2, 3}, 27);
  const at::Tensor offline = RefineOffline(*model, z, eps, text, RefinerOptions());
  RefinerChunkRunner runner(model, text, RefinerOptions());
  runner.CaptureSink(z.narrow(2, 0, 1));
  const at::Tensor streamed = runner.RefineBlock(z.narrow(2, 1, 3), eps);
  EXPECT_TRUE(Near(streamed, offline.narrow(2, 1, 3), kInvariantTol, "single block"));
  // With more frames the modes differ (offline is bidirectional over all current frames).
  const at::Tensor z7 = Randn({1, 8, 7, 2, 3}, 28), eps7 = Randn({1, 8, 6, 2, 3}, 29);
  const at::Tensor offline7 = RefineOffline(*model, z7, eps7, text, RefinerOptions());
  RefinerChunkRunner runner7(model, text, RefinerOptions());
  runner7.CaptureSink(z7.narrow(2, 0, 1));
  const at::Tensor first = runner7.RefineBlock(z7.narrow(2, 1, 3), eps7.narrow(2, 0, 3));
  EXPECT_GT(RelErr(first, offline7.narrow(2, 1, 3)), 1e-4);
}

TEST(Ltx2Refiner, SeededNoiseIsOneDrawPerBlockInOrder) {
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 30);
  const at::Tensor z = Randn({1, 8, 7, 2, 3}, 31);
  RefinerOptions options;
  options.seed = 1234;
  // The runner's stream: a generator seeded with options.seed, one randn per block.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const at::Tensor e0 = at::randn({1, 8, 3, 2, 3}, gen), e1 = at::randn({1, 8, 3, 2, 3}, gen);
  RefinerChunkRunner drawn(model, text, options), given(model, text, options);
  drawn.CaptureSink(z.narrow(2, 0, 1));
  given.CaptureSink(z.narrow(2, 0, 1));
  EXPECT_TRUE(drawn.RefineBlock(z.narrow(2, 1, 3)).equal(given.RefineBlock(z.narrow(2, 1, 3), e0)));
  EXPECT_TRUE(drawn.RefineBlock(z.narrow(2, 4, 3)).equal(given.RefineBlock(z.narrow(2, 4, 3), e1)));
  // Offline: one draw for all current frames.
  at::Generator gen2 = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const at::Tensor eps = at::randn({1, 8, 6, 2, 3}, gen2);
  EXPECT_TRUE(RefineOffline(*model, z, text, options).equal(RefineOffline(*model, z, eps, text, options)));
  options.seed = 1235;
  EXPECT_FALSE(RefineOffline(*model, z, text, options).equal(RefineOffline(*model, z, eps, text, options)));
}

TEST(Ltx2Refiner, CancelStopsBeforeTheNextForward) {
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 32);
  const at::Tensor z = Randn({1, 8, 7, 2, 3}, 33), eps = Randn({1, 8, 3, 2, 3}, 34);
  for (const int cancel_at : {0, 1, 3}) {
    RefinerChunkRunner runner(model, text, RefinerOptions());
    runner.CaptureSink(z.narrow(2, 0, 1));
    runner.RefineBlock(z.narrow(2, 1, 3), eps);
    std::vector<int> calls;
    std::vector<std::string> taps;
    EXPECT_THROW(runner.RefineBlock(
                     z.narrow(2, 4, 3), eps,
                     [&](int step) {
                       calls.push_back(step);
                       return step != cancel_at;
                     },
                     [&](const std::string& name, const at::Tensor&) { taps.push_back(name); }),
                 RolloutCancelled);
    EXPECT_EQ(calls.back(), cancel_at);
    EXPECT_EQ(static_cast<int>(calls.size()), cancel_at + 1);
    // The forward of the cancelled step never ran: no x_t of it was emitted, no x0 after it.
    const std::string x_t = "step" + std::to_string(cancel_at) + ".x_t";
    EXPECT_EQ(std::count(taps.begin(), taps.end(), x_t), 0);
    EXPECT_EQ(std::count(taps.begin(), taps.end(), "capture.layer0.v"), 0);
    // The state is untouched and the runner refuses further work.
    EXPECT_EQ(runner.history_frames(), 3);
    EXPECT_EQ(runner.frames_refined(), 3);
    EXPECT_THROW(runner.RefineBlock(z.narrow(2, 4, 3), eps), RolloutCancelled);
  }
  RefinerChunkRunner sink_runner(model, text, RefinerOptions());
  EXPECT_THROW(sink_runner.CaptureSink(z.narrow(2, 0, 1), [](int) { return false; }),
               RolloutCancelled);
  EXPECT_FALSE(sink_runner.sink_captured());
  int offline_calls = 0;
  EXPECT_THROW(RefineOffline(*model, z.narrow(2, 0, 4), eps, text, RefinerOptions(),
                             [&](int step) {
                               ++offline_calls;
                               return step < 2;
                             }),
               RolloutCancelled);
  EXPECT_EQ(offline_calls, 3);
}

TEST(Ltx2Refiner, BadInputsAreInvalidInputErrors) {
  const auto model = TinyModel();
  const Ltx2TextContext text = RandomText(*model, 1, 35);
  const at::Tensor z = Randn({1, 8, 7, 2, 3}, 36), eps = Randn({1, 8, 3, 2, 3}, 37);
  auto message_of = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const InvalidInputError& e) {
      return e.what();
    }
    return "no InvalidInputError";
  };
  RefinerChunkRunner runner(model, text, RefinerOptions());
  EXPECT_THAT(message_of([&] { runner.RefineBlock(z.narrow(2, 1, 3), eps); }),
              HasSubstr("CaptureSink must run"));
  EXPECT_THAT(message_of([&] { runner.CaptureSink(z.narrow(2, 0, 2)); }),
              HasSubstr("expected sink_size = 1"));
  EXPECT_THAT(message_of([&] { runner.CaptureSink(Randn({1, 4, 1, 2, 3}, 1)); }),
              HasSubstr("(B, 8, T, H, W)"));
  at::Tensor nan_sink = z.narrow(2, 0, 1).clone();
  nan_sink[0][0][0][0][0] = std::nan("");
  EXPECT_THAT(message_of([&] { runner.CaptureSink(nan_sink); }), HasSubstr("non-finite"));
  runner.CaptureSink(z.narrow(2, 0, 1));
  EXPECT_THAT(message_of([&] { runner.CaptureSink(z.narrow(2, 0, 1)); }),
              HasSubstr("already captured"));
  EXPECT_THAT(message_of([&] { runner.RefineBlock(Randn({1, 8, 4, 2, 3}, 2)); }),
              HasSubstr("1..3"));
  EXPECT_THAT(message_of([&] { runner.RefineBlock(Randn({1, 16, 3, 2, 3}, 2)); }),
              HasSubstr("(B, 8, T, H, W)"));
  EXPECT_THAT(message_of([&] { runner.RefineBlock(Randn({1, 8, 3, 3, 3}, 2)); }),
              HasSubstr("like the sink"));
  EXPECT_THAT(message_of([&] { runner.RefineBlock(z.narrow(2, 1, 3), eps.narrow(2, 0, 2)); }),
              HasSubstr("eps has shape"));
  at::Tensor nan_eps = eps.clone();
  nan_eps[0][3][1][1][1] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(message_of([&] { runner.RefineBlock(z.narrow(2, 1, 3), nan_eps); }),
              HasSubstr("eps has non-finite"));
  EXPECT_EQ(runner.frames_refined(), 0);  // rejected inputs change nothing
  // A short block is only allowed as the last one.
  runner.RefineBlock(z.narrow(2, 1, 2), eps.narrow(2, 0, 2));
  EXPECT_EQ(runner.frames_refined(), 2);
  EXPECT_THAT(message_of([&] { runner.RefineBlock(z.narrow(2, 3, 3), eps); }),
              HasSubstr("was the last one"));
  // Offline.
  EXPECT_THAT(message_of([&] { RefineOffline(*model, z.narrow(2, 0, 1), eps, text, RefinerOptions()); }),
              HasSubstr("more than sink_size"));
  EXPECT_THAT(message_of([&] { RefineOffline(*model, z.narrow(2, 0, 4), eps.narrow(2, 0, 2), text, RefinerOptions()); }),
              HasSubstr("eps has shape"));
  EXPECT_THAT(message_of([&] { RefineOffline(*model, z.narrow(2, 0, 4), eps, RandomText(*model, 2, 1), RefinerOptions()); }),
              HasSubstr("batch"));
  RefinerOptions bad;
  bad.sigmas = {0.5f};
  EXPECT_THROW(RefineOffline(*model, z.narrow(2, 0, 4), eps, text, bad), ConfigError);
  EXPECT_THROW(RefinerChunkRunner(model, text, bad), ConfigError);
  // Transformer inputs.
  const Ltx2RopeTable rope = model->Rope(FrameRange(0, 1), 2, 3, 16.0);
  const Ltx2Timesteps ts = Ltx2Timesteps::Uniform(at::zeros({1}), 6);
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 6, 7}, 3), ts, rope, text); }),
              HasSubstr("tokens have shape"));
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 12, 8}, 3), ts, rope, text); }),
              HasSubstr("RoPE table"));
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 6, 8}, 3), Ltx2Timesteps::PerToken(at::zeros({1, 5})), rope, text); }),
              HasSubstr("per-token timesteps"));
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 6, 8}, 3), Ltx2Timesteps::Grouped(at::zeros({1, 2}), {2, 3}), rope, text); }),
              HasSubstr("grouped timesteps"));
  EXPECT_THAT(message_of([&] { model->Forward(Randn({2, 6, 8}, 3), Ltx2Timesteps::Uniform(at::zeros({2}), 6), rope, text); }),
              HasSubstr("text context"));
  Ltx2ForwardOptions prefix;
  prefix.pattern = AttentionPattern::kPrefix;
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 6, 8}, 3), ts, rope, text, prefix); }),
              HasSubstr("workspace"));
  Ltx2ForwardOptions masked;
  masked.self_attention_mask = at::zeros({6, 6}, at::kBool);
  EXPECT_THAT(message_of([&] { model->Forward(Randn({1, 6, 8}, 3), ts, rope, text, masked); }),
              HasSubstr("attends to no key"));
  EXPECT_THAT(message_of([&] { model->PrepareText(Randn({1, 16, 31}, 3)); }),
              HasSubstr("text has shape"));
  at::Tensor nan_text = Randn({1, 16, 32}, 3);
  nan_text[0][2][3] = std::nan("");
  EXPECT_THAT(message_of([&] { model->PrepareText(nan_text); }), HasSubstr("non-finite"));
  EXPECT_THAT(message_of([&] { model->PrepareText(Randn({1, 16, 32}, 3), at::ones({1, 15})); }),
              HasSubstr("mask has shape"));
  Ltx2Transformer unloaded(TransformerConfig::Preset("tiny"));
  EXPECT_THROW(unloaded.Forward(Randn({1, 6, 8}, 3), ts, rope, text), std::runtime_error);
}

TEST(Ltx2Refiner, Bf16StaysCloseToFloat32) {
  const auto model = TinyModel();
  Ltx2Transformer bf16(model->config());
  bf16.LoadWeights([&](const std::string& name, const std::vector<int64_t>&) {
    return model->Parameter(name);
  }, at::kBFloat16);
  const at::Tensor text = Randn({1, 16, 32}, 38);
  const at::Tensor z = Randn({1, 8, 4, 2, 3}, 39), eps = Randn({1, 8, 3, 2, 3}, 40);
  const at::Tensor ref = RefineOffline(*model, z, eps, model->PrepareText(text), RefinerOptions());
  const at::Tensor got = RefineOffline(bf16, z, eps, bf16.PrepareText(text), RefinerOptions());
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  EXPECT_LT(RelErr(got, ref), 5e-2);
}

}  // namespace
}  // namespace wmserve::worker::ltx2
