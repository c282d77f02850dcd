// Tests for the frame-wise Gated DeltaNet scans of the SANA-WM port (worker/models/sana/gdn.h).
//
// Two kinds:
//  * Golden parity with ../shared/golden/sana-wm-tiny/gdn_layer.safetensors (produced by the
//    diffusers reference, `torch_chunk_sana_gdn` / `torch_chunk_cam_single_path_delta_rule`),
//    err = max|port - ref| / max|ref| <= 1e-5 (README §8). The folder comes from
//    $WMSERVE_GOLDEN_ROOT/sana-wm-tiny, default <source>/../shared/golden/sana-wm-tiny; tests skip without it.
//    The layer-level tensors (block0.beta/decay, cam_raw, attn_out) additionally need
//    weights.safetensors and bidirectional.safetensors from the same folder.
//  * Invariants on random inputs: chunked == recurrent, bidirectional = forward-inclusive +
//    backward-exclusive, streaming with a carried state == the causal scan, state size
//    independent of the sequence length, fp32 compute for any input dtype, misuse errors.
#include "tests/model/model_test_util.h"
#include "worker/models/sana/gdn.h"

#include <ATen/Context.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::sana {
namespace {

using test_util::FileExists;
using test_util::MaxAbs;
using test_util::RelErr;
using test_util::SanaGoldenDir;

using ::testing::HasSubstr;

// README §8: syn.*, block0.main.*, block0.cam.* (float64 NumPy within 2e-7); block-level 1e-4.
constexpr double kGoldenTol = 1e-5;
constexpr double kBlockTol = 1e-4;
// Two fp32 evaluations of the same recurrence in different association orders.
constexpr double kTightTol = 2e-6;

::testing::AssertionResult Close(const at::Tensor& got, const at::Tensor& ref, double tol,
                                 const std::string& what) {
  if (!got.defined() || !ref.defined()) {
    return ::testing::AssertionFailure() << what << ": undefined tensor";
  }
  if (got.sizes() != ref.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs reference "
                                         << ref.sizes();
  }
  const double err = RelErr(got, ref);
  if (!(err <= tol)) {
    return ::testing::AssertionFailure() << what << ": rel err " << err << " > " << tol;
  }
  return ::testing::AssertionSuccess() << what << ": rel err " << err;
}

bool Equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && MaxAbs(a.to(at::kDouble).sub(b.to(at::kDouble))) == 0.0;
}

// (B, H, D, N) -> (B, N, H*D), the layout of main_raw / cam_raw.
at::Tensor HeadsToTokens(const at::Tensor& x) {
  return x.permute({0, 3, 1, 2}).reshape({x.size(0), x.size(3), x.size(1) * x.size(2)});
}

std::vector<GdnScanOptions> AllMethods() {
  std::vector<GdnScanOptions> methods;
  for (int64_t chunk : {1, 2, 3, 4, 7, 21}) {
    methods.push_back({GdnScanMethod::kChunked, chunk});
  }
  methods.push_back({GdnScanMethod::kRecurrent, kDefaultGdnChunkFrames});
  return methods;
}

std::string Describe(const GdnScanOptions& o) {
  return o.method == GdnScanMethod::kRecurrent ? std::string("recurrent")
                                               : "chunked/" + std::to_string(o.chunk_frames);
}

// ---------------------------------------------------------------------------------------------
// Golden data.



// Max errors seen per golden tensor, printed once at the end of the run for the record.
std::vector<std::pair<std::string, double>>& ErrorLog() {
  static auto* log = new std::vector<std::pair<std::string, double>>();
  return *log;
}

class ErrorReport : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, err] : ErrorLog()) {
      std::cout << "golden " << name << ": max rel err " << err << "\n";
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kErrorReport =
    ::testing::AddGlobalTestEnvironment(new ErrorReport);

class GdnGoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = SanaGoldenDir() + "/gdn_layer.safetensors";
    if (FileExists(path)) file_ = std::make_unique<SafetensorsFile>(SafetensorsFile::Open(path));
  }
  static void TearDownTestSuite() { file_.reset(); }
  void SetUp() override {
    if (!file_) {
      GTEST_SKIP() << "golden data not found: " << SanaGoldenDir()
                   << "/gdn_layer.safetensors (set WMSERVE_GOLDEN_ROOT to the folder that holds sana-wm-tiny)";
    }
  }

  static at::Tensor Get(const std::string& name) { return file_->Load(name, at::kFloat); }

  // Compares and records the worst error per reference tensor.
  static void Check(const at::Tensor& got, const std::string& ref_name, double tol,
                    const std::string& how) {
    const at::Tensor ref = Get(ref_name);
    EXPECT_TRUE(Close(got, ref, tol, ref_name + " (" + how + ")"));
    if (got.sizes() != ref.sizes()) return;
    const double err = RelErr(got, ref);
    for (auto& [name, worst] : ErrorLog()) {
      if (name == ref_name) {
        worst = std::max(worst, err);
        return;
      }
    }
    ErrorLog().emplace_back(ref_name, err);
  }

  static GdnScanInputs MainInputs(const std::string& prefix) {
    return {Get(prefix + "q"),     Get(prefix + "k"),    Get(prefix + "v"),
            Get(prefix + "q_rot"), Get(prefix + "k_rot"), Get(prefix + "beta"),
            Get(prefix + "decay")};
  }
  static CamScanInputs CamInputs(const std::string& prefix) {
    return {Get(prefix + "q_rot"), Get(prefix + "k_rot"), Get(prefix + "v"), Get(prefix + "beta"),
            Get(prefix + "decay")};
  }

  static inline std::unique_ptr<SafetensorsFile> file_;
};

TEST_F(GdnGoldenTest, SyntheticMainScan) {
  const GdnScanInputs in = MainInputs("syn.");
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const GdnComponents fwd = GdnForwardScan(in, options);
    const GdnComponents bwd = GdnBackwardScan(in, options);
    Check(fwd.num, "syn.fwd.num", kGoldenTol, Describe(options));
    Check(fwd.den, "syn.fwd.den", kGoldenTol, Describe(options));
    Check(bwd.num, "syn.bwd.num", kGoldenTol, Describe(options));
    Check(bwd.den, "syn.bwd.den", kGoldenTol, Describe(options));
    Check(GdnCombine(fwd, bwd), "syn.out", kGoldenTol, Describe(options));
    Check(GdnBidirectional(in, options), "syn.out", kGoldenTol, Describe(options));
  }
}

TEST_F(GdnGoldenTest, SyntheticCameraScan) {
  const CamScanInputs in{Get("syn.q_rot"), Get("syn.k_rot"), Get("syn.v"), Get("syn.beta"),
                         Get("syn.decay")};
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    Check(CamForwardScan(in, options), "syn.cam.fwd", kGoldenTol, Describe(options));
    Check(CamBackwardScan(in, options), "syn.cam.bwd", kGoldenTol, Describe(options));
    Check(CamBidirectional(in, options), "syn.cam.out", kGoldenTol, Describe(options));
  }
}

TEST_F(GdnGoldenTest, SyntheticChunkCausalAndStreaming) {
  const GdnScanInputs in = MainInputs("syn.");
  const CamScanInputs cam{in.q_rot, in.k_rot, in.v, in.beta, in.decay};
  const std::vector<int64_t> chunks = {4, 3};
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const std::string how = Describe(options);
    Check(GdnChunkCausal(in, chunks, options), "syn.cc.out", kGoldenTol, how);
    Check(CamChunkCausal(cam, chunks, options), "syn.cc.cam.out", kGoldenTol, how);

    // The per-chunk backward scans on their own.
    const GdnComponents b0 = GdnBackwardScan(SliceFrames(in, 0, 4), options);
    const GdnComponents b1 = GdnBackwardScan(SliceFrames(in, 4, 7), options);
    Check(at::cat({b0.num, b1.num}, 3), "syn.cc.bwd.num", kGoldenTol, how);
    Check(at::cat({b0.den, b1.den}, 3), "syn.cc.bwd.den", kGoldenTol, how);
    Check(at::cat({CamBackwardScan(SliceFrames(cam, 0, 4), options),
                   CamBackwardScan(SliceFrames(cam, 4, 7), options)},
                  3),
          "syn.cc.cam.bwd", kGoldenTol, how);

    // Streaming: chunk 1 seeded with the state after chunk 0.
    const GdnStreamOutput s0 = GdnStreamChunk(SliceFrames(in, 0, 4), {}, options);
    const GdnStreamOutput s1 = GdnStreamChunk(SliceFrames(in, 4, 7), s0.state, options);
    Check(at::cat({s0.out, s1.out}, 3), "syn.cc.out", kGoldenTol, how + ", streamed");
    const CamStreamOutput c0 = CamStreamChunk(SliceFrames(cam, 0, 4), {}, options);
    const CamStreamOutput c1 = CamStreamChunk(SliceFrames(cam, 4, 7), c0.state, options);
    Check(at::cat({c0.out, c1.out}, 3), "syn.cc.cam.out", kGoldenTol, how + ", streamed");

    // Restarting chunk 1 from zero must be visibly wrong (README: 75 % relative), so the carry
    // above is really exercised.
    const at::Tensor ref1 = Get("syn.cc.out").narrow(3, 4 * 8, 3 * 8);
    const GdnStreamOutput cold = GdnStreamChunk(SliceFrames(in, 4, 7), {}, options);
    EXPECT_GT(RelErr(cold.out, ref1), 0.1);
    EXPECT_LT(RelErr(s1.out, ref1), kGoldenTol);
  }
}

TEST_F(GdnGoldenTest, Block0MainBranchScanCalls) {
  const GdnScanInputs fwd_in = MainInputs("block0.main.fwd.in.");
  const GdnScanInputs bwd_in = MainInputs("block0.main.bwd_flipped.in.");
  const int64_t frames = fwd_in.decay.size(2);

  // The gates given to the scan are the block's gates.
  EXPECT_TRUE(Equal(fwd_in.beta, Get("block0.beta")));
  EXPECT_TRUE(Equal(fwd_in.decay, Get("block0.decay")));

  // The second reference call's arguments are our flip-and-shift of the first's.
  const GdnScanInputs flipped = FlipShiftForBackward(fwd_in);
  EXPECT_TRUE(Equal(flipped.q, bwd_in.q));
  EXPECT_TRUE(Equal(flipped.k, bwd_in.k));
  EXPECT_TRUE(Equal(flipped.v, bwd_in.v));
  EXPECT_TRUE(Equal(flipped.q_rot, bwd_in.q_rot));
  EXPECT_TRUE(Equal(flipped.k_rot, bwd_in.k_rot));
  EXPECT_TRUE(Equal(flipped.beta, bwd_in.beta));
  EXPECT_TRUE(Equal(flipped.decay, bwd_in.decay));

  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const std::string how = Describe(options);
    // Both reference calls, literally.
    const GdnComponents fwd = GdnForwardScan(fwd_in, options);
    Check(fwd.num, "block0.main.fwd.num", kGoldenTol, how);
    Check(fwd.den, "block0.main.fwd.den", kGoldenTol, how);
    const GdnComponents second = GdnForwardScan(bwd_in, options);
    Check(second.num, "block0.main.bwd_flipped.num", kGoldenTol, how);
    Check(second.den, "block0.main.bwd_flipped.den", kGoldenTol, how);
    // Our natural-order backward scan equals the second call flipped back.
    const GdnComponents bwd = GdnBackwardScan(fwd_in, options);
    Check(FlipFrames(bwd.num, frames), "block0.main.bwd_flipped.num", kGoldenTol,
          how + ", natural-order backward");
    Check(FlipFrames(bwd.den, frames), "block0.main.bwd_flipped.den", kGoldenTol,
          how + ", natural-order backward");
    Check(HeadsToTokens(GdnBidirectional(fwd_in, options)), "block0.main_raw", kGoldenTol, how);
  }
}

TEST_F(GdnGoldenTest, Block0CameraBranchScanCalls) {
  const CamScanInputs fwd_in = CamInputs("block0.cam.fwd.in.");
  const CamScanInputs bwd_in = CamInputs("block0.cam.bwd_flipped.in.");
  const int64_t frames = fwd_in.decay.size(2);

  const CamScanInputs flipped = FlipShiftForBackward(fwd_in);
  EXPECT_TRUE(Equal(flipped.q_rot, bwd_in.q_rot));
  EXPECT_TRUE(Equal(flipped.k_rot, bwd_in.k_rot));
  EXPECT_TRUE(Equal(flipped.v, bwd_in.v));
  EXPECT_TRUE(Equal(flipped.beta, bwd_in.beta));
  EXPECT_TRUE(Equal(flipped.decay, bwd_in.decay));

  // Shared decay; beta is the block's beta divided by a per-(frame, head) factor >= 1.
  EXPECT_TRUE(Equal(fwd_in.decay, Get("block0.decay")));
  const at::Tensor ratio = Get("block0.beta").div(fwd_in.beta);  // (B, H, T, S)
  EXPECT_GE(ratio.min().item<double>(), 1.0 - 1e-6);
  const at::Tensor spread = std::get<0>(ratio.max(3)).sub(std::get<0>(ratio.min(3)));
  EXPECT_LT(MaxAbs(spread.div(std::get<0>(ratio.max(3)))), 1e-5);
  EXPECT_GT(ratio.max().item<double>(), 1.5);  // the discount is active somewhere

  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const std::string how = Describe(options);
    Check(CamForwardScan(fwd_in, options), "block0.cam.fwd.out", kGoldenTol, how);
    Check(CamForwardScan(bwd_in, options), "block0.cam.bwd_flipped.out", kGoldenTol, how);
    Check(FlipFrames(CamBackwardScan(fwd_in, options), frames), "block0.cam.bwd_flipped.out",
          kGoldenTol, how + ", natural-order backward");
  }
}

// The layer-level tensors of gdn_layer.safetensors, from our scan outputs plus the few block
// operations around them (done here with plain ATen, independent of the port's block code).
class GdnGoldenLayerTest : public GdnGoldenTest {
 protected:
  void SetUp() override {
    GdnGoldenTest::SetUp();
    if (IsSkipped()) return;
    for (const char* name : {"weights.safetensors", "bidirectional.safetensors"}) {
      const std::string path = SanaGoldenDir() + "/" + name;
      if (!FileExists(path)) GTEST_SKIP() << "golden data not found: " << path;
    }
    weights_ = std::make_unique<SafetensorsFile>(
        SafetensorsFile::Open(SanaGoldenDir() + "/weights.safetensors"));
    bidir_ = std::make_unique<SafetensorsFile>(
        SafetensorsFile::Open(SanaGoldenDir() + "/bidirectional.safetensors"));
  }
  at::Tensor W(const std::string& name) const {
    return weights_->Load("blocks.0.attn." + name, at::kFloat);
  }

  // Inverse UCPE on the camera scan output (B, H, D, N): first half, groups of 4 -> P x (P the
  // per-token world->ray matrix, inter.raymats); second half -> conj(RoPE) with the camera table,
  // complex pairs {0, 1, 4, 6} of the model's table (README §2).
  at::Tensor InverseUcpe(const at::Tensor& out) const {
    const int64_t b = out.size(0), h = out.size(1), d = out.size(2), n = out.size(3);
    const int64_t half = d / 2;
    const at::Tensor x = out.permute({0, 1, 3, 2});  // (B, H, N, D)
    const at::Tensor p = bidir_->Load("inter.raymats", at::kFloat).reshape({b, 1, n, 1, 4, 4});
    const at::Tensor groups = x.narrow(3, 0, half).reshape({b, h, n, half / 4, 4, 1});
    const at::Tensor projected = at::matmul(p, groups).reshape({b, h, n, half});

    const at::Tensor table = bidir_->Load("inter.rope_freqs", at::kFloat);  // (N, pairs, 2)
    std::vector<at::Tensor> pairs;
    for (int64_t pair : {0, 1, 4, 6}) pairs.push_back(table.select(1, pair));
    const at::Tensor cam_table = at::stack(pairs, 1);  // (N, 4, 2)
    const at::Tensor cos = cam_table.select(2, 0), sin = cam_table.select(2, 1);
    const at::Tensor rot = x.narrow(3, half, half).reshape({b, h, n, half / 2, 2});
    const at::Tensor re = rot.select(4, 0), im = rot.select(4, 1);
    // (re + i im) * (cos - i sin)
    const at::Tensor rotated =
        at::stack({re.mul(cos).add(im.mul(sin)), im.mul(cos).sub(re.mul(sin))}, 4)
            .reshape({b, h, n, half});
    return HeadsToTokens(at::cat({projected, rotated}, 3).permute({0, 1, 3, 2}));
  }

  std::unique_ptr<SafetensorsFile> weights_, bidir_;
};

TEST_F(GdnGoldenLayerTest, Block0GatesFromWeights) {
  const at::Tensor h = Get("block0.attn_in");
  const FrameGates gates =
      ComputeFrameGates(h, /*frames=*/7, /*tokens_per_frame=*/8, W("beta_proj.weight"),
                        W("beta_proj.bias"), W("gate_proj.weight"), W("gate_proj.bias"),
                        W("A_log"), W("dt_bias"));
  Check(gates.beta, "block0.beta", kGoldenTol, "ComputeFrameGates");
  Check(gates.decay, "block0.decay", kGoldenTol, "ComputeFrameGates");
}

TEST_F(GdnGoldenLayerTest, Block0CamRawAndAttentionOutput) {
  const at::Tensor main_raw = HeadsToTokens(GdnBidirectional(MainInputs("block0.main.fwd.in.")));
  const at::Tensor cam_raw = InverseUcpe(CamBidirectional(CamInputs("block0.cam.fwd.in.")));
  Check(cam_raw, "block0.cam_raw", kGoldenTol, "CamBidirectional + inverse UCPE");

  const at::Tensor h = Get("block0.attn_in");
  const at::Tensor combined =
      main_raw.add(at::linear(cam_raw, W("out_proj_cam.weight"), W("out_proj_cam.bias")));
  const at::Tensor gate = at::linear(h, W("output_gate.weight"), W("output_gate.bias"));
  const at::Tensor gated = combined.mul(gate.mul(gate.sigmoid()));  // SiLU
  const at::Tensor attn_out = at::linear(gated, W("proj.weight"), W("proj.bias"));
  Check(attn_out, "block0.attn_out", kBlockTol, "scans + out_proj_cam, output gate, proj");
}

// ---------------------------------------------------------------------------------------------
// Invariants on random inputs.

struct Sizes {
  int64_t B = 2, H = 3, D = 8, Dv = 8, T = 10, S = 6;
};

// Inputs shaped like the model's: q = ReLU(randn), k = ReLU(randn) / sqrt(D S), rotated copies
// by random per-token angles on interleaved pairs, beta in [0.5, 1], decay in [0.6, 1].
GdnScanInputs RandomInputs(const Sizes& z, uint64_t seed, bool per_token_beta = true) {
  at::manual_seed(seed);
  const int64_t n = z.T * z.S;
  auto rotate = [&](const at::Tensor& x) {
    const at::Tensor angle = at::rand({z.B, z.H, z.D / 2, 1, n}).mul(6.283185307179586);
    const at::Tensor pairs = x.reshape({z.B, z.H, z.D / 2, 2, n});
    const at::Tensor a = pairs.select(3, 0), b = pairs.select(3, 1);
    const at::Tensor c = at::cos(angle).squeeze(3), s = at::sin(angle).squeeze(3);
    return at::stack({a.mul(c).sub(b.mul(s)), a.mul(s).add(b.mul(c))}, 3).reshape(x.sizes());
  };
  GdnScanInputs in;
  in.q = at::relu(at::randn({z.B, z.H, z.D, n}));
  in.k = at::relu(at::randn({z.B, z.H, z.D, n})).mul(GdnKeyScale(z.D, z.S));
  in.v = at::randn({z.B, z.H, z.Dv, n});
  in.q_rot = rotate(in.q);
  in.k_rot = rotate(in.k);
  in.beta = per_token_beta ? at::rand({z.B, z.H, z.T, z.S}).mul(0.5).add(0.5)
                           : at::rand({z.B, z.H, z.T}).mul(0.5).add(0.5);
  in.decay = at::rand({z.B, z.H, z.T}).mul(0.4).add(0.6);
  return in;
}

CamScanInputs CamOf(const GdnScanInputs& in) {
  return {in.q_rot, in.k_rot, in.v, in.beta, in.decay};
}

GdnState RandomState(const Sizes& z, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({z.B, z.H, z.Dv, z.D}).mul(0.3), at::rand({z.B, z.H, z.D, 1})};
}

TEST(GdnInvariants, ChunkedMatchesRecurrent) {
  const GdnScanOptions recurrent{GdnScanMethod::kRecurrent, 1};
  for (int64_t frames : {1, 5, 10}) {
    for (bool per_token_beta : {true, false}) {
      Sizes z;
      z.T = frames;
      z.Dv = 4;  // Dv != Dk is allowed
      const GdnScanInputs in = RandomInputs(z, 100 + frames, per_token_beta);
      const GdnState init = RandomState(z, 7);
      GdnState ref_state;
      const GdnComponents ref_fwd = GdnForwardScan(in, recurrent, init, &ref_state);
      const GdnComponents ref_bwd = GdnBackwardScan(in, recurrent);
      at::Tensor ref_cam_state;
      const at::Tensor ref_cam_fwd = CamForwardScan(CamOf(in), recurrent, init.kv, &ref_cam_state);
      const at::Tensor ref_cam_bwd = CamBackwardScan(CamOf(in), recurrent);
      for (int64_t chunk : {1, 2, 3, 4, 7, 21}) {
        SCOPED_TRACE("T=" + std::to_string(frames) + " chunk=" + std::to_string(chunk) +
                     (per_token_beta ? " per-token beta" : " per-frame beta"));
        const GdnScanOptions chunked{GdnScanMethod::kChunked, chunk};
        GdnState state;
        const GdnComponents fwd = GdnForwardScan(in, chunked, init, &state);
        const GdnComponents bwd = GdnBackwardScan(in, chunked);
        EXPECT_TRUE(Close(fwd.num, ref_fwd.num, kTightTol, "fwd.num"));
        EXPECT_TRUE(Close(fwd.den, ref_fwd.den, kTightTol, "fwd.den"));
        EXPECT_TRUE(Close(bwd.num, ref_bwd.num, kTightTol, "bwd.num"));
        EXPECT_TRUE(Close(bwd.den, ref_bwd.den, kTightTol, "bwd.den"));
        EXPECT_TRUE(Close(state.kv, ref_state.kv, kTightTol, "state.kv"));
        EXPECT_TRUE(Close(state.z, ref_state.z, kTightTol, "state.z"));
        at::Tensor cam_state;
        EXPECT_TRUE(Close(CamForwardScan(CamOf(in), chunked, init.kv, &cam_state), ref_cam_fwd,
                          kTightTol, "cam fwd"));
        EXPECT_TRUE(Close(CamBackwardScan(CamOf(in), chunked), ref_cam_bwd, kTightTol, "cam bwd"));
        EXPECT_TRUE(Close(cam_state, ref_cam_state, kTightTol, "cam state"));
      }
    }
  }
}

TEST(GdnInvariants, BidirectionalIsForwardInclusivePlusBackwardExclusive) {
  const Sizes z;
  const GdnScanInputs in = RandomInputs(z, 11);
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const GdnComponents fwd = GdnForwardScan(in, options);
    const GdnComponents bwd = GdnBackwardScan(in, options);
    EXPECT_TRUE(Close(GdnBidirectional(in, options), GdnCombine(fwd, bwd), 1e-7, "main"));
    const at::Tensor manual = fwd.num.add(bwd.num).div(fwd.den.add(bwd.den).add(kGdnEps));
    EXPECT_TRUE(Close(GdnCombine(fwd, bwd), manual, 0.0, "combine"));
    EXPECT_TRUE(Close(CamBidirectional(CamOf(in), options),
                      CamForwardScan(CamOf(in), options).add(CamBackwardScan(CamOf(in), options)),
                      1e-7, "camera"));

    // The backward scan is the reference's forward scan on flip-and-shifted inputs, flipped back.
    const GdnComponents via_flip = GdnForwardScan(FlipShiftForBackward(in), options);
    EXPECT_TRUE(Close(FlipFrames(via_flip.num, z.T), bwd.num, kTightTol, "flip composition num"));
    EXPECT_TRUE(Close(FlipFrames(via_flip.den, z.T), bwd.den, kTightTol, "flip composition den"));
    EXPECT_TRUE(Close(FlipFrames(CamForwardScan(FlipShiftForBackward(CamOf(in)), options), z.T),
                      CamBackwardScan(CamOf(in), options), kTightTol, "flip composition cam"));

    // Exclusive: the last frame's backward output is exactly zero.
    EXPECT_EQ(MaxAbs(bwd.num.narrow(3, (z.T - 1) * z.S, z.S)), 0.0);
    EXPECT_EQ(MaxAbs(bwd.den.narrow(3, (z.T - 1) * z.S, z.S)), 0.0);
  }
}

// Changing frame t0's keys, values and gates leaves the forward outputs of frames < t0 and the
// backward outputs of frames >= t0 bit-identical, and changes the forward output at t0
// (inclusive) and the backward output at t0 - 1.
TEST(GdnInvariants, ScanDirectionsSeeTheRightFrames) {
  const Sizes z;
  const int64_t t0 = 4, s = z.S;
  const GdnScanInputs in = RandomInputs(z, 21);
  GdnScanInputs changed = in;
  auto bump = [&](const at::Tensor& x) {
    at::Tensor y = x.clone();
    y.narrow(3, t0 * s, s).mul_(0.5).add_(0.01);
    return y;
  };
  changed.k = bump(in.k);
  changed.k_rot = bump(in.k_rot);
  changed.v = bump(in.v);
  changed.beta = in.beta.clone();
  changed.beta.select(2, t0).mul_(0.7);
  changed.decay = in.decay.clone();
  changed.decay.select(2, t0).mul_(0.8);
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    const GdnComponents f0 = GdnForwardScan(in, options), f1 = GdnForwardScan(changed, options);
    const GdnComponents b0 = GdnBackwardScan(in, options), b1 = GdnBackwardScan(changed, options);
    const int64_t n = z.T * s;
    EXPECT_TRUE(Equal(f0.num.narrow(3, 0, t0 * s), f1.num.narrow(3, 0, t0 * s)));
    EXPECT_TRUE(Equal(f0.den.narrow(3, 0, t0 * s), f1.den.narrow(3, 0, t0 * s)));
    EXPECT_TRUE(Equal(b0.num.narrow(3, t0 * s, n - t0 * s), b1.num.narrow(3, t0 * s, n - t0 * s)));
    EXPECT_TRUE(Equal(b0.den.narrow(3, t0 * s, n - t0 * s), b1.den.narrow(3, t0 * s, n - t0 * s)));
    EXPECT_GT(RelErr(f1.num.narrow(3, t0 * s, s), f0.num.narrow(3, t0 * s, s)), 1e-3);
    EXPECT_GT(RelErr(b1.num.narrow(3, (t0 - 1) * s, s), b0.num.narrow(3, (t0 - 1) * s, s)), 1e-3);
  }
}

TEST(GdnInvariants, StreamingWithCarriedStateMatchesCausalScan) {
  Sizes z;
  z.T = 13;
  const std::vector<int64_t> chunks = {4, 3, 3, 3};
  const GdnScanInputs in = RandomInputs(z, 31);
  for (const GdnScanOptions& options : AllMethods()) {
    SCOPED_TRACE(Describe(options));
    GdnState whole_state;
    const GdnComponents whole = GdnForwardScan(in, options, {}, &whole_state);
    at::Tensor whole_cam_state;
    const at::Tensor whole_cam = CamForwardScan(CamOf(in), options, {}, &whole_cam_state);
    const at::Tensor teacher = GdnChunkCausal(in, chunks, options);
    const at::Tensor cam_teacher = CamChunkCausal(CamOf(in), chunks, options);

    GdnState state, stream_state;
    at::Tensor cam_state, cam_stream_state;
    std::vector<at::Tensor> nums, dens, cams, outs, cam_outs;
    int64_t t0 = 0;
    for (int64_t len : chunks) {
      const GdnScanInputs chunk = SliceFrames(in, t0, t0 + len);
      GdnState next;
      const GdnComponents part = GdnForwardScan(chunk, options, state, &next);
      state = next;
      nums.push_back(part.num);
      dens.push_back(part.den);
      at::Tensor next_cam;
      cams.push_back(CamForwardScan(CamOf(chunk), options, cam_state, &next_cam));
      cam_state = next_cam;

      const GdnStreamOutput streamed = GdnStreamChunk(chunk, stream_state, options);
      outs.push_back(streamed.out);
      stream_state = streamed.state;
      const CamStreamOutput cam_streamed = CamStreamChunk(CamOf(chunk), cam_stream_state, options);
      cam_outs.push_back(cam_streamed.out);
      cam_stream_state = cam_streamed.state;
      t0 += len;
    }
    EXPECT_TRUE(Close(at::cat(nums, 3), whole.num, kTightTol, "carried fwd num"));
    EXPECT_TRUE(Close(at::cat(dens, 3), whole.den, kTightTol, "carried fwd den"));
    EXPECT_TRUE(Close(state.kv, whole_state.kv, kTightTol, "carried state kv"));
    EXPECT_TRUE(Close(state.z, whole_state.z, kTightTol, "carried state z"));
    EXPECT_TRUE(Close(at::cat(cams, 3), whole_cam, kTightTol, "carried cam fwd"));
    EXPECT_TRUE(Close(cam_state, whole_cam_state, kTightTol, "carried cam state"));
    // Streaming chunk by chunk == the chunk-causal teacher over the whole sequence.
    EXPECT_TRUE(Close(at::cat(outs, 3), teacher, kTightTol, "stream vs chunk-causal"));
    EXPECT_TRUE(Close(at::cat(cam_outs, 3), cam_teacher, kTightTol, "cam stream vs chunk-causal"));
    EXPECT_TRUE(Close(stream_state.kv, whole_state.kv, kTightTol, "stream state kv"));
    EXPECT_TRUE(Close(cam_stream_state, whole_cam_state, kTightTol, "cam stream state"));
  }
}

TEST(GdnInvariants, StreamChunkDoesNotModifyCarriedState) {
  const Sizes z;
  const GdnScanInputs in = RandomInputs(z, 41);
  const GdnState carried = RandomState(z, 42);
  const at::Tensor kv = carried.kv.clone(), zs = carried.z.clone();
  const GdnStreamOutput a = GdnStreamChunk(in, carried);
  const GdnStreamOutput b = GdnStreamChunk(in, carried);  // e.g. the next denoising step
  EXPECT_TRUE(Equal(carried.kv, kv));
  EXPECT_TRUE(Equal(carried.z, zs));
  EXPECT_TRUE(Equal(a.out, b.out));
  EXPECT_TRUE(Equal(a.state.kv, b.state.kv));
}

TEST(GdnInvariants, StateSizeIsIndependentOfSequenceLength) {
  Sizes z;
  const int64_t expected_kv = z.B * z.H * z.Dv * z.D * 4, expected_z = z.B * z.H * z.D * 4;
  for (int64_t frames : {1, 4, 40}) {
    z.T = frames;
    const GdnScanInputs in = RandomInputs(z, 51);
    GdnState state;
    GdnForwardScan(in, {}, {}, &state);
    EXPECT_EQ(state.kv.sizes(), (std::vector<int64_t>{z.B, z.H, z.Dv, z.D}));
    EXPECT_EQ(state.z.sizes(), (std::vector<int64_t>{z.B, z.H, z.D, 1}));
    EXPECT_EQ(static_cast<int64_t>(state.kv.nbytes()), expected_kv);
    EXPECT_EQ(static_cast<int64_t>(state.z.nbytes()), expected_z);
    at::Tensor cam_state;
    CamForwardScan(CamOf(in), {}, {}, &cam_state);
    EXPECT_EQ(static_cast<int64_t>(cam_state.nbytes()), expected_kv);
  }
  // A long rollout: the carried state stays the same size chunk after chunk.
  z.T = 3;
  GdnState state;
  at::Tensor cam_state;
  for (int chunk = 0; chunk < 20; ++chunk) {
    const GdnScanInputs in = RandomInputs(z, 60 + chunk);
    state = GdnStreamChunk(in, state).state;
    cam_state = CamStreamChunk(CamOf(in), cam_state).state;
    ASSERT_EQ(static_cast<int64_t>(state.kv.nbytes()), expected_kv);
    ASSERT_EQ(static_cast<int64_t>(state.z.nbytes()), expected_z);
    ASSERT_EQ(static_cast<int64_t>(cam_state.nbytes()), expected_kv);
  }
  EXPECT_TRUE(std::isfinite(MaxAbs(state.kv)));
}

TEST(GdnInvariants, ComputesInFloat32ForAnyInputDtype) {
  const Sizes z;
  const GdnScanInputs in = RandomInputs(z, 71);
  for (c10::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto cast = [&](const GdnScanInputs& x, c10::ScalarType t) {
      return GdnScanInputs{x.q.to(t),     x.k.to(t),     x.v.to(t),    x.q_rot.to(t),
                           x.k_rot.to(t), x.beta.to(t), x.decay.to(t)};
    };
    const GdnScanInputs low = cast(in, dtype);
    const GdnScanInputs as_float = cast(low, at::kFloat);
    const at::Tensor out = GdnBidirectional(low);
    EXPECT_EQ(out.scalar_type(), at::kFloat);
    EXPECT_TRUE(Equal(out, GdnBidirectional(as_float)));
    const at::Tensor cam = CamBidirectional(CamOf(low));
    EXPECT_EQ(cam.scalar_type(), at::kFloat);
    EXPECT_TRUE(Equal(cam, CamBidirectional(CamOf(as_float))));
  }
}

// ---------------------------------------------------------------------------------------------
// Misuse.

void ExpectThrows(const std::function<void()>& fn, const std::string& substring) {
  try {
    fn();
    ADD_FAILURE() << "expected std::runtime_error containing \"" << substring << "\"";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(substring));
  }
}

TEST(GdnMisuse, RejectsBadInputsWithPreciseMessages) {
  const Sizes z;
  const GdnScanInputs good = RandomInputs(z, 81);
  GdnScanInputs in = good;

  in.k = good.k.narrow(3, 0, 59);
  ExpectThrows([&] { GdnForwardScan(in); },
               "GdnForwardScan: k has shape [2, 3, 8, 59], expected [2, 3, 8, 60]");
  in = good;
  in.q_rot = at::Tensor();
  ExpectThrows([&] { GdnBidirectional(in); }, "GdnBidirectional: q_rot is undefined");
  in = good;
  in.decay = good.decay.narrow(2, 0, 7);
  ExpectThrows([&] { GdnBackwardScan(in); }, "N=60 tokens is not divisible by T=7");
  in = good;
  in.beta = good.beta.narrow(3, 0, 5);
  ExpectThrows([&] { GdnForwardScan(in); }, "beta has shape [2, 3, 10, 5], expected [2, 3, 10, 6]");
  in = good;
  in.v = good.v.narrow(1, 0, 2);
  ExpectThrows([&] { GdnForwardScan(in); }, "v has shape [2, 2, 8, 60], expected (B, H, Dv, N)");
  in = good;
  in.decay = good.decay.to(at::kLong);
  ExpectThrows([&] { GdnForwardScan(in); }, "decay has dtype Long");

  ExpectThrows([&] { GdnForwardScan(good, {GdnScanMethod::kChunked, 0}); },
               "options.chunk_frames=0 must be >= 1");
  ExpectThrows([&] { GdnChunkCausal(good, {4, 3, 2}); },
               "GdnChunkCausal: chunk_sizes sum to 9 frames but the inputs have T=10");
  ExpectThrows([&] { CamChunkCausal(CamOf(good), {4, 0, 6}); }, "chunk_sizes[1]=0 must be >= 1");

  GdnState partial;
  partial.kv = at::zeros({z.B, z.H, z.Dv, z.D});
  ExpectThrows([&] { GdnStreamChunk(good, partial); }, "GdnStreamChunk: state.z is undefined");
  GdnState wrong{at::zeros({z.B, z.H, z.D, z.D + 1}), at::zeros({z.B, z.H, z.D, 1})};
  ExpectThrows([&] { GdnForwardScan(good, {}, wrong); },
               "state.kv has shape [2, 3, 8, 9], expected [2, 3, 8, 8] (B, H, Dv, Dk)");
  ExpectThrows([&] { CamStreamChunk(CamOf(good), at::zeros({1, 3, 8, 8})); },
               "CamStreamChunk: initial_kv has shape [1, 3, 8, 8]");

  ExpectThrows([&] { SliceFrames(good, 3, 3); }, "frame range [3, 3) is empty");
  ExpectThrows([&] { SliceFrames(CamOf(good), 0, 11); }, "outside [0, 10)");
  ExpectThrows([&] { FlipFrames(good.v, 7); }, "FlipFrames: N=60 tokens is not a positive multiple");
  ExpectThrows([&] { GdnKeyScale(0, 8); }, "GdnKeyScale: head_dim=0");
  ExpectThrows(
      [&] {
        GdnCombine({good.v, good.decay}, {good.v, good.decay});
      },
      "GdnCombine: fwd.den has shape [2, 3, 10]");

  const at::Tensor h = at::randn({2, 56, 16});
  const at::Tensor w = at::randn({4, 16}), bias = at::randn({4});
  ExpectThrows([&] { ComputeFrameGates(h, 7, 7, w, bias, w, bias, bias, bias); },
               "ComputeFrameGates: h has shape [2, 56, 16], expected (B, N, C) with N = frames");
  ExpectThrows([&] { ComputeFrameGates(h, 7, 8, w, bias, w, bias, at::randn({3}), bias); },
               "a_log has shape [3], expected [4] (H)");
}

TEST(GdnKeyScale, IsOneOverSqrtOfHeadDimTimesTokens) {
  EXPECT_DOUBLE_EQ(GdnKeyScale(16, 8), 1.0 / std::sqrt(128.0));
  EXPECT_NEAR(GdnKeyScale(112, 880), 3.185e-3, 1e-6);  // spec §1.4
}

}  // namespace
}  // namespace wmserve::worker::sana
