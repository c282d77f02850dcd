// Tests for the LTX-2.0 video VAE port (worker/models/ltx2/vae*.h).
//
//  * Golden parity with ../shared/golden/ltx2-vae-tiny (diffusers AutoencoderKLLTX2Video and
//    SANA's causal class + CausalVaeStreamingDecoder; README there). The model is built from the
//    `config` JSON of the golden metadata and weights.safetensors is loaded strictly. Compared
//    with err = max|port - ref| / max|ref| <= 1e-5 (README §7): the image and clip moments / mu /
//    z and every stored encoder intermediate, inter.denormalized, the offline, causal and
//    streaming decodes and their stored intermediates. The folder comes from
//    $WMSERVE_GOLDEN_ROOT/ltx2-vae-tiny, default <source>/../shared/golden/ltx2-vae-tiny; the
//    golden tests skip without it.
//  * ltx2-spec §5 invariants 1-10: shapes, causal encoder, causal decoder prefix stability,
//    streaming == one-call causal decode for every chunking (and Reset), non-causal vs causal,
//    sampler residuals with zeroed convs, channel orderings, PixelNorm scale invariance, the
//    normalisation round trip, parameter counts (from the config) and the streaming cache size.
//  * Config parsing/validation errors, presets, pixel I/O, dummy weights, bad inputs and bad
//    weights files.
#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/model_test_util.h"
#include "worker/models/ltx2/vae.h"
#include "worker/models/ltx2/vae_config.h"
#include "worker/models/ltx2/vae_ops.h"
#include "worker/models/ltx2/vae_pixels.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::ltx2 {
namespace {

using test_util::FileExists;
using test_util::GoldenDir;
using test_util::MaxAbs;
using test_util::RelErr;
using test_util::WriteFloatSafetensors;

using ::testing::HasSubstr;

constexpr double kGoldenTol = 1e-5;  // README §7, every output.* and inter.* tensor
constexpr char kGoldenName[] = "ltx2-vae-tiny";

// Worst error per golden tensor, printed at the end of the run for the record.
std::map<std::string, double>& ErrorLog() {
  static auto* log = new std::map<std::string, double>();
  return *log;
}

class VaeErrorReport : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& [name, err] : ErrorLog()) {
      std::cout << "golden " << name << ": max rel err " << err << "\n";
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kVaeErrorReport =
    ::testing::AddGlobalTestEnvironment(new VaeErrorReport);

::testing::AssertionResult Close(const at::Tensor& got, const at::Tensor& ref, double tol,
                                 const std::string& what, bool log = false) {
  if (!got.defined()) return ::testing::AssertionFailure() << what << ": not produced";
  if (got.sizes() != ref.sizes()) {
    return ::testing::AssertionFailure()
           << what << ": shape " << got.sizes() << " vs reference " << ref.sizes();
  }
  const double err = RelErr(got, ref);
  if (log) {
    double& worst = ErrorLog()[what];
    worst = std::max(worst, err);
  }
  if (!(err <= tol)) {
    return ::testing::AssertionFailure() << what << ": rel err " << err << " > " << tol;
  }
  return ::testing::AssertionSuccess() << what << ": rel err " << err;
}

// Bitwise equality (used where the reference itself is bit-identical, README §5.8).
::testing::AssertionResult Identical(const at::Tensor& a, const at::Tensor& b,
                                     const std::string& what) {
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << a.sizes() << " vs " << b.sizes();
  }
  if (!at::equal(a, b)) {
    return ::testing::AssertionFailure() << what << ": differs by up to " << MaxAbs(a.sub(b));
  }
  return ::testing::AssertionSuccess();
}

template <typename E>
void ExpectThrowWith(const std::function<void()>& fn, const std::string& substring) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception containing \"" << substring << "\"";
  } catch (const E& e) {
    EXPECT_THAT(e.what(), HasSubstr(substring));
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Replaces the one occurrence of `from` in `text` (fails the test if it is not exactly once).
std::string ReplaceOnce(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos) return text;
  EXPECT_EQ(text.find(from, at + 1), std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

// =============================================================================================
// Golden parity.

class VaeGoldenTest : public ::testing::Test {
 protected:
  static std::string Dir() { return GoldenDir(kGoldenName); }

  static void SetUpTestSuite() {
    for (const char* name : {"weights.safetensors", "encode.safetensors", "decode.safetensors"}) {
      if (!FileExists(Dir() + "/" + name)) return;
    }
    weights_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(Dir() + "/weights.safetensors"));
    encode_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(Dir() + "/encode.safetensors"));
    decode_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(Dir() + "/decode.safetensors"));
    auto vae =
        std::make_shared<VideoVae>(VaeConfig::FromDiffusersJson(weights_->Metadata("config")));
    vae->LoadWeights(*weights_);
    vae_ = std::move(vae);
  }
  static void TearDownTestSuite() {
    vae_.reset();
    weights_.reset();
    encode_.reset();
    decode_.reset();
  }
  void SetUp() override {
    if (!vae_) {
      GTEST_SKIP() << "golden data not found in " << Dir()
                   << " (set WMSERVE_GOLDEN_ROOT to the folder that holds " << kGoldenName << ")";
    }
  }

  static at::Tensor Enc(const std::string& name) { return encode_->Load(name, at::kFloat); }
  static at::Tensor Dec(const std::string& name) { return decode_->Load(name, at::kFloat); }
  static at::Tensor Z() { return Dec("input.z"); }

  // Streams z in chunks of the given latent frame counts; returns the concatenated pixels and
  // checks each chunk's frame count (first chunk 1 + 8(n-1), later 8n).
  static at::Tensor Stream(CausalStreamingDecoder& decoder, const at::Tensor& z,
                           const std::vector<int64_t>& chunks) {
    std::vector<at::Tensor> parts;
    int64_t start = 0;
    for (const int64_t n : chunks) {
      const bool first = decoder.latent_frames_decoded() == 0;
      at::Tensor part = decoder.DecodeChunk(z.narrow(2, start, n));
      EXPECT_EQ(part.size(2), first ? 1 + 8 * (n - 1) : 8 * n) << "chunk at " << start;
      parts.push_back(part);
      start += n;
    }
    return at::cat(parts, 2);
  }

  static std::unique_ptr<SafetensorsFile> weights_, encode_, decode_;
  static std::shared_ptr<const VideoVae> vae_;
};

std::unique_ptr<SafetensorsFile> VaeGoldenTest::weights_;
std::unique_ptr<SafetensorsFile> VaeGoldenTest::encode_;
std::unique_ptr<SafetensorsFile> VaeGoldenTest::decode_;
std::shared_ptr<const VideoVae> VaeGoldenTest::vae_;

TEST_F(VaeGoldenTest, ConfigFromMetadataIsTheReadmeConfig) {
  const VaeConfig& c = vae_->config();
  EXPECT_EQ(c.latent_channels, 8);
  EXPECT_EQ(c.block_out_channels, (std::vector<int>{16, 32, 64, 64}));
  EXPECT_EQ(c.layers_per_block, (std::vector<int>{2, 1, 1, 1, 1}));
  EXPECT_FALSE(c.decoder_causal);
  // Reversal quirk (README §2.1): up_blocks.2 gets two resnets, mid and up_blocks.0/1 one.
  EXPECT_EQ(c.DecoderMidLayers(), 1);
  EXPECT_EQ(c.DecoderUpBlockLayers(0), 1);
  EXPECT_EQ(c.DecoderUpBlockLayers(2), 2);
  EXPECT_EQ(c.DecoderBlockOutChannels(0), 64);
  // Same config in all three files, and it is the tiny preset.
  EXPECT_EQ(encode_->Metadata("config"), weights_->Metadata("config"));
  EXPECT_EQ(decode_->Metadata("config"), weights_->Metadata("config"));
  VaeConfig preset = VaeConfig::Preset("tiny");
  preset.name = c.name;
  EXPECT_EQ(preset.ToJson(), c.ToJson());
  // SANA's causal class config (decoder_upsample_type null, no upsample_type) parses to the same
  // model with a causal decoder.
  VaeConfig sana = VaeConfig::FromDiffusersJson(weights_->Metadata("sana_causal_config"));
  sana.Validate();
  EXPECT_TRUE(sana.decoder_causal);
  sana.decoder_causal = false;
  EXPECT_EQ(sana.ToJson(), c.ToJson());
}

TEST_F(VaeGoldenTest, ExpectedTensorsAndCountsMatchTheWeightsFile) {
  EXPECT_NO_THROW(weights_->CheckTensors(VideoVae::ExpectedTensors(vae_->config())));
  // README §2.2: encoder 573,269, decoder 902,832; the file adds the two (8) buffers.
  EXPECT_EQ(VideoVae::EncoderParameterCount(vae_->config()), 573269);
  EXPECT_EQ(VideoVae::DecoderParameterCount(vae_->config()), 902832);
  int64_t file_values = 0;
  for (const std::string& name : weights_->names()) file_values += weights_->Info(name).numel();
  EXPECT_EQ(file_values, vae_->ParameterCount() + 2 * 8);
  EXPECT_EQ(file_values, 1476117);
}

TEST_F(VaeGoldenTest, ImageEncodeMatchesGolden) {
  std::map<std::string, at::Tensor> taps;
  const VaeTrace trace = [&](const std::string& name, const at::Tensor& value) {
    taps[name] = value.detach().clone();
  };
  const at::Tensor image = Enc("input.image");
  const at::Tensor moments = vae_->EncodeMoments(image, &trace);
  EXPECT_TRUE(
      Close(moments, Enc("output.image.moments"), kGoldenTol, "output.image.moments", true));
  EXPECT_TRUE(Close(vae_->EncodeMean(image), Enc("output.image.latent_mean"), kGoldenTol,
                    "output.image.latent_mean", true));
  EXPECT_TRUE(
      Close(vae_->Encode(image), Enc("output.image.z"), kGoldenTol, "output.image.z", true));
  std::vector<std::string> inter = {"patchify", "conv_in", "mid_block", "conv_out"};
  for (int i = 0; i < 4; ++i) {
    const std::string block = "down_blocks." + std::to_string(i);
    inter.push_back(block);
    for (int j = 0; j < (i == 0 ? 2 : 1); ++j)
      inter.push_back(block + ".resnets." + std::to_string(j));
  }
  for (const std::string& name : inter) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(encode_->Contains("inter.image." + name));
    EXPECT_TRUE(
        Close(taps[name], Enc("inter.image." + name), kGoldenTol, "inter.image." + name, true));
  }
}

TEST_F(VaeGoldenTest, ClipEncodeMatchesGolden) {
  const at::Tensor clip = Enc("input.clip");
  EXPECT_TRUE(Close(vae_->EncodeMoments(clip), Enc("output.clip.moments"), kGoldenTol,
                    "output.clip.moments", true));
  EXPECT_TRUE(Close(vae_->Encode(clip), Enc("output.clip.z"), kGoldenTol, "output.clip.z", true));
}

TEST_F(VaeGoldenTest, DenormalisationMatchesGolden) {
  EXPECT_TRUE(Close(vae_->DenormalizeLatents(Z()), Dec("inter.denormalized"), kGoldenTol,
                    "inter.denormalized", true));
}

// Decodes with a trace and compares the output and the stored intermediates of `prefix`.
void CheckDecode(const VideoVae& vae, const SafetensorsFile& file, TemporalPadding time,
                 const std::string& output, const std::string& prefix) {
  std::map<std::string, at::Tensor> taps;
  const VaeTrace trace = [&](const std::string& name, const at::Tensor& value) {
    taps[name] = value.detach().clone();
  };
  const at::Tensor pixels = vae.DecodeDenormalized(
      vae.DenormalizeLatents(file.Load("input.z", at::kFloat)), time, &trace);
  EXPECT_EQ(pixels.scalar_type(), at::kFloat);
  EXPECT_TRUE(Close(pixels, file.Load(output, at::kFloat), kGoldenTol, output, true));
  int compared = 0;
  for (const auto& [name, value] : taps) {
    const std::string golden_name = prefix + name;
    if (!file.Contains(golden_name)) continue;
    EXPECT_TRUE(Close(value, file.Load(golden_name, at::kFloat), kGoldenTol, golden_name, true));
    ++compared;
  }
  // conv_in, mid_block, up_blocks.{0,1,2} with their upsamplers (offline: the last level is not
  // stored, README §4).
  EXPECT_EQ(compared, prefix == "inter.causal." ? 8 : 6);
}

TEST_F(VaeGoldenTest, OfflineDecodeMatchesGolden) {
  CheckDecode(*vae_, *decode_, TemporalPadding::kNonCausal, "output.offline", "inter.offline.");
  EXPECT_TRUE(Close(vae_->DecodeOffline(Z()), Dec("output.offline"), kGoldenTol, "output.offline"));
  // Decode() follows decoder_causal = false (the official LTX-2.0 decoder).
  EXPECT_TRUE(Identical(vae_->Decode(Z()), vae_->DecodeOffline(Z()), "Decode vs DecodeOffline"));
}

TEST_F(VaeGoldenTest, CausalDecodeMatchesGolden) {
  CheckDecode(*vae_, *decode_, TemporalPadding::kCausal, "output.causal", "inter.causal.");
  EXPECT_TRUE(Close(vae_->DecodeCausal(Z()), Dec("output.causal"), kGoldenTol, "output.causal"));
}

TEST_F(VaeGoldenTest, StreamingDecodeMatchesGolden) {
  // README §3: chunks [0:1] then [1:3].
  CausalStreamingDecoder decoder(vae_);
  const at::Tensor stream = Stream(decoder, Z(), {1, 2});
  EXPECT_TRUE(Close(stream, Dec("output.causal_stream"), kGoldenTol, "output.causal_stream", true));
  EXPECT_TRUE(Close(stream, Dec("output.causal"), kGoldenTol, "stream vs output.causal"));
  EXPECT_EQ(decoder.latent_frames_decoded(), 3);
}

TEST_F(VaeGoldenTest, EveryChunkingEqualsTheOneCallCausalDecode) {
  // ltx2-spec §5 invariant 4.
  const at::Tensor reference = Dec("output.causal");
  const at::Tensor one_call = vae_->DecodeCausal(Z());
  const std::vector<std::vector<int64_t>> chunkings = {{1, 1, 1}, {1, 2}, {2, 1}, {3}};
  for (const auto& chunks : chunkings) {
    for (const int64_t per_pass : {int64_t{0}, int64_t{1}}) {
      std::string name = "chunks";
      for (const int64_t n : chunks) name += " " + std::to_string(n);
      name += per_pass ? ", one frame per pass" : "";
      SCOPED_TRACE(name);
      CausalStreamingDecoder::Options options;
      options.max_latent_frames_per_pass = per_pass;
      CausalStreamingDecoder decoder(vae_, options);
      const at::Tensor stream = Stream(decoder, Z(), chunks);
      EXPECT_TRUE(Close(stream, reference, kGoldenTol, name + " vs output.causal"));
      EXPECT_TRUE(Close(stream, one_call, kGoldenTol, name + " vs DecodeCausal"));
    }
  }
}

TEST_F(VaeGoldenTest, ResetRestoresFirstChunkBehaviour) {
  CausalStreamingDecoder decoder(vae_);
  EXPECT_EQ(decoder.CacheBytes(), 0);
  const at::Tensor first = decoder.DecodeChunk(Z().narrow(2, 0, 1));
  ASSERT_EQ(first.size(2), 1);
  // The cache holds 2 float32 frames of every decoder conv input (ltx2-spec §1.8).
  EXPECT_EQ(decoder.CacheBytes(),
            VideoVae::StreamingCacheElements(vae_->config(), 1, 2, 3) * int64_t{4});
  const at::Tensor rest = decoder.DecodeChunk(Z().narrow(2, 1, 2));
  ASSERT_EQ(rest.size(2), 16);
  EXPECT_EQ(decoder.CacheBytes(),
            VideoVae::StreamingCacheElements(vae_->config(), 1, 2, 3) * int64_t{4});

  decoder.Reset();
  EXPECT_EQ(decoder.CacheBytes(), 0);
  EXPECT_EQ(decoder.latent_frames_decoded(), 0);
  const at::Tensor again = decoder.DecodeChunk(Z().narrow(2, 0, 1));
  ASSERT_EQ(again.size(2), 1);  // a first chunk again: 1 pixel frame, not 8
  EXPECT_TRUE(Identical(again, first, "first chunk after Reset"));
  EXPECT_TRUE(Close(again, Dec("output.causal").narrow(2, 0, 1), kGoldenTol,
                    "first chunk after Reset vs output.causal[:1]"));
  EXPECT_TRUE(
      Identical(decoder.DecodeChunk(Z().narrow(2, 1, 2)), rest, "second chunk after Reset"));
}

TEST_F(VaeGoldenTest, StreamRejectsAShapeChangeUntilReset) {
  CausalStreamingDecoder decoder(vae_);
  const at::Tensor z = Z();
  (void)decoder.DecodeChunk(z.narrow(2, 0, 1));
  const at::Tensor wider = at::cat({z, z}, 4);  // 2x6 latents
  ExpectThrowWith<InvalidInputError>([&] { (void)decoder.DecodeChunk(wider.narrow(2, 1, 1)); },
                                     "the stream was started with batch 1 and 2x3 latents");
  decoder.Reset();
  EXPECT_EQ(decoder.DecodeChunk(wider.narrow(2, 0, 1)).sizes(),
            (std::vector<int64_t>{1, 3, 1, 64, 192}));
}

TEST_F(VaeGoldenTest, EncoderIsCausal) {
  // ltx2-spec §5 invariant 2: changing pixel frames > 8j never changes latent frames <= j.
  const at::Tensor clip9 = Enc("input.clip");
  const at::Tensor extra =
      at::rand({1, 3, 8, 64, 96}, at::TensorOptions().dtype(at::kFloat)) * 2 - 1;
  const at::Tensor clip17 = at::cat({clip9, extra}, 2);
  const at::Tensor base = vae_->EncodeMoments(clip17);
  ASSERT_EQ(base.sizes(), (std::vector<int64_t>{1, 16, 3, 2, 3}));

  at::Tensor late = clip17.clone();
  late.narrow(2, 9, 8).neg_();  // pixel frames 9..16 -> only latent frame 2 may change
  const at::Tensor late_moments = vae_->EncodeMoments(late);
  EXPECT_TRUE(Identical(late_moments.narrow(2, 0, 2), base.narrow(2, 0, 2), "latents 0-1"));
  EXPECT_GT(RelErr(late_moments.narrow(2, 2, 1), base.narrow(2, 2, 1)), 1e-2);

  at::Tensor early = clip17.clone();
  early.narrow(2, 1, 8).neg_();  // pixel frames 1..8 -> latent frame 0 unchanged
  const at::Tensor early_moments = vae_->EncodeMoments(early);
  EXPECT_TRUE(Identical(early_moments.narrow(2, 0, 1), base.narrow(2, 0, 1), "latent 0"));
  EXPECT_GT(RelErr(early_moments.narrow(2, 1, 1), base.narrow(2, 1, 1)), 1e-2);

  // The image alone encodes to latent frame 0 of any clip starting with it (README §5.8:
  // within rounding, since the convs run over a different number of frames).
  EXPECT_TRUE(Close(vae_->EncodeMoments(Enc("input.image")), base.narrow(2, 0, 1), kGoldenTol,
                    "image vs clip latent 0"));
}

TEST_F(VaeGoldenTest, CausalDecoderPrefixIsStable) {
  // ltx2-spec §5 invariant 3: changing latent frames > j leaves pixel frames <= 8j unchanged.
  const at::Tensor z = Z();
  const at::Tensor base = vae_->DecodeCausal(z);
  for (const int64_t j : {int64_t{0}, int64_t{1}}) {
    SCOPED_TRACE("j = " + std::to_string(j));
    at::Tensor changed = z.clone();
    changed.narrow(2, j + 1, 2 - j).mul_(-1.5);
    const at::Tensor pixels = vae_->DecodeCausal(changed);
    EXPECT_TRUE(
        Identical(pixels.narrow(2, 0, 8 * j + 1), base.narrow(2, 0, 8 * j + 1), "pixel prefix"));
    EXPECT_GT(
        RelErr(pixels.narrow(2, 8 * j + 1, 16 - 8 * j), base.narrow(2, 8 * j + 1, 16 - 8 * j)),
        1e-2);
  }
}

TEST_F(VaeGoldenTest, NonCausalDiffersFromCausalExceptForOneFrame) {
  // ltx2-spec §5 invariant 5 / README §5.7: relative difference 1.28, frame 0 included.
  const at::Tensor z = Z();
  const at::Tensor offline = vae_->DecodeOffline(z), causal = vae_->DecodeCausal(z);
  EXPECT_GT(RelErr(offline, causal), 0.5);
  EXPECT_GT(RelErr(offline.narrow(2, 0, 1), causal.narrow(2, 0, 1)), 1e-2);
  const at::Tensor one = z.narrow(2, 0, 1);
  EXPECT_TRUE(Identical(vae_->DecodeOffline(one), vae_->DecodeCausal(one), "T = 1"));
  EXPECT_EQ(vae_->DecodeOffline(one).sizes(), (std::vector<int64_t>{1, 3, 1, 64, 96}));
}

TEST_F(VaeGoldenTest, DecodeFollowsTheDecoderCausalFlag) {
  VaeConfig causal_config = vae_->config();
  causal_config.decoder_causal = true;
  VideoVae causal(causal_config);
  causal.LoadWeights(*weights_);
  EXPECT_TRUE(Identical(causal.Decode(Z()), vae_->DecodeCausal(Z()), "decoder_causal = true"));
}

TEST_F(VaeGoldenTest, NormalisationRoundTrips) {
  // ltx2-spec §5 invariant 9.
  const at::Tensor mu = Enc("output.image.latent_mean");
  EXPECT_TRUE(Close(vae_->DenormalizeLatents(vae_->NormalizeLatents(mu)), mu, 1e-6, "mu"));
  const at::Tensor z = Z();
  EXPECT_TRUE(Close(vae_->NormalizeLatents(vae_->DenormalizeLatents(z)), z, 1e-6, "z"));
  // Per channel: z = (mu - mean) / std with scaling_factor 1.
  const at::Tensor mean = weights_->Load("latents_mean").view({1, 8, 1, 1, 1});
  const at::Tensor std = weights_->Load("latents_std").view({1, 8, 1, 1, 1});
  EXPECT_TRUE(Close(vae_->NormalizeLatents(mu), mu.sub(mean).div(std), 1e-6, "formula"));
}

TEST_F(VaeGoldenTest, BadInputsGivePreciseErrors) {
  const at::Tensor image = Enc("input.image");
  ExpectThrowWith<InvalidInputError>(
      [&] {
        (void)vae_->Encode(at::cat({image, image}, 2));
      },
      "pixels has 2 frames, not 1 + 8k");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->Encode(image.narrow(3, 0, 48)); },
                                     "pixels is 48x96, not a positive multiple of 32");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->EncodeMoments(image.narrow(1, 0, 2)); },
                                     "pixels has shape [1, 2, 1, 64, 96], expected (B, 3, 1+8k");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->EncodeMean(image.squeeze(2)); },
                                     "pixels has shape [1, 3, 64, 96]");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->Encode(image.to(at::kByte)); },
                                     "non-floating-point dtype");
  const at::Tensor z = Z();
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->DecodeCausal(z.narrow(1, 0, 7)); },
                                     "latents has shape [1, 7, 3, 2, 3], expected floating-point "
                                     "(B, 8, T, h, w)");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->DecodeOffline(z.narrow(3, 0, 1)); },
                                     "reflect padding needs h, w >= 2");
  ExpectThrowWith<InvalidInputError>([&] { (void)vae_->DecodeOffline(z.narrow(2, 0, 0)); },
                                     "with T >= 1");
  CausalStreamingDecoder decoder(vae_);
  ExpectThrowWith<InvalidInputError>([&] { (void)decoder.DecodeChunk(z.narrow(1, 0, 4)); },
                                     "latents has shape [1, 4, 3, 2, 3]");
  VideoVae unloaded(vae_->config());
  ExpectThrowWith<std::runtime_error>([&] { (void)unloaded.Encode(image); }, "no weights loaded");
}

TEST_F(VaeGoldenTest, BadWeightsFilesGivePreciseErrors) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const std::string& name : weights_->names()) {
    if (name == "decoder.up_blocks.1.resnets.0.conv2.conv.bias") continue;  // missing
    at::Tensor t = weights_->Load(name, at::kFloat);
    if (name == "encoder.down_blocks.3.downsamplers.0.conv.conv.weight") t = t.narrow(0, 0, 4);
    tensors.emplace_back(name, t);
  }
  tensors.emplace_back("decoder.up_blocks.0.resnets.1.conv1.conv.bias", at::zeros({32}));
  const std::string path =
      ::testing::TempDir() + "ltx2_vae_bad_weights_" + std::to_string(::getpid()) + ".safetensors";
  WriteFloatSafetensors(path, tensors);
  VideoVae vae(vae_->config());
  try {
    vae.LoadWeights(SafetensorsFile::Open(path));
    ADD_FAILURE() << "LoadWeights accepted a bad file";
  } catch (const SafetensorsError& e) {
    EXPECT_THAT(e.what(),
                HasSubstr("1 missing (decoder.up_blocks.1.resnets.0.conv2.conv.bias [16])"));
    EXPECT_THAT(e.what(),
                HasSubstr("1 unexpected (decoder.up_blocks.0.resnets.1.conv1.conv.bias)"));
    EXPECT_THAT(e.what(), HasSubstr("encoder.down_blocks.3.downsamplers.0.conv.conv.weight: file "
                                    "[4,64,3,3,3], model [8,64,3,3,3]"));
  }
  EXPECT_FALSE(vae.loaded());
  std::remove(path.c_str());
}

TEST_F(VaeGoldenTest, Bf16StaysCloseToFp32) {
  // bf16 weights and activations (SANA-WM's precision): a smoke bound, not parity.
  VideoVae bf16(vae_->config(), at::kBFloat16);
  bf16.LoadWeights(*weights_);
  EXPECT_EQ(bf16.Parameter("decoder.conv_in.conv.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(bf16.Parameter("latents_std").scalar_type(), at::kFloat);
  const at::Tensor pixels = bf16.DecodeCausal(Z());
  EXPECT_EQ(pixels.scalar_type(), at::kFloat);
  EXPECT_TRUE(Close(pixels, Dec("output.causal"), 5e-2,
                    "bf16 decode vs output.causal (smoke bound)", true));
  EXPECT_TRUE(Close(bf16.Encode(Enc("input.image")), Enc("output.image.z"), 5e-2,
                    "bf16 encode vs output.image.z (smoke bound)", true));
}

// =============================================================================================
// Config, presets, counts, geometry (no golden data needed).

TEST(VaeConfigTest, PresetFilesAreTheCompiledInPresets) {
  for (const std::string& name : VaePresetNames()) {
    SCOPED_TRACE(name);
    const std::string path =
        std::string(WMSERVE_SOURCE_DIR) + "/worker/models/ltx2/presets/vae_" + name + ".json";
    EXPECT_EQ(ReadText(path), std::string(VaePresetJson(name)));
    EXPECT_EQ(VaeConfig::FromFile(path).ToJson(), VaeConfig::Preset(name).ToJson());
    // ToJson round-trips.
    EXPECT_EQ(VaeConfig::FromDiffusersJson(VaeConfig::Preset(name).ToJson()).ToJson(),
              VaeConfig::Preset(name).ToJson());
  }
  EXPECT_EQ(VaeConfig::Preset("full").ToJson(), VaeConfig::Preset("ltx2").ToJson());
  ExpectThrowWith<ConfigError>([] { (void)VaeConfig::Preset("huge"); },
                               "unknown VAE preset 'huge'");
}

TEST(VaeConfigTest, RejectsWhatThePortDoesNotImplement) {
  const std::string tiny(VaePresetJson("tiny"));
  struct Case {
    std::string from, to, message;
  };
  const std::vector<Case> cases = {
      {"\"timestep_conditioning\": false", "\"timestep_conditioning\": true",
       "timestep_conditioning = true is not implemented"},
      {"\"decoder_inject_noise\": [false,", "\"decoder_inject_noise\": [true,",
       "decoder_inject_noise[0] = true is not implemented"},
      {"\"upsample_type\": [\"spatiotemporal\",", "\"upsample_type\": [\"spatial\",",
       "upsample_type[0] 'spatial' is not implemented (supported: 'spatiotemporal')"},
      {"\"upsample_residual\": [true, true, true]", "\"upsample_residual\": [true, false, true]",
       "upsample_residual[1] = false is not implemented"},
      {"\"downsample_type\": [\"spatial\",", "\"downsample_type\": [\"conv\",",
       "downsample_type[0] 'conv' is not implemented"},
      {"\"patch_size_t\": 1", "\"patch_size_t\": 2", "patch_size_t = 2 is not implemented"},
      {"\"decoder_spatial_padding_mode\": \"reflect\"",
       "\"decoder_spatial_padding_mode\": \"replicate\"",
       "decoder_spatial_padding_mode 'replicate' is not implemented"},
      {"\"layers_per_block\": [2, 1, 1, 1, 1]", "\"layers_per_block\": [2, 1, 1, 1]",
       "layers_per_block has 4 entries, expected 5"},
      {"\"decoder_block_out_channels\": [16, 32, 64]",
       "\"decoder_block_out_channels\": [16, 48, 64]",
       "up_blocks.1 receives 32 channels but decoder_block_out_channels (reversed) gives it 48"},
      {"\"spatial_compression_ratio\": 32", "\"spatial_compression_ratio\": 16",
       "spatial_compression_ratio = 16 but the encoder layers compress by 32"},
      {"\"block_out_channels\": [16, 32, 64, 64]", "\"block_out_channels\": [16, 32, 64, 60]",
       "block_out_channels[3] = 60 is not divisible by the spatiotemporal stride product 8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.to);
    ExpectThrowWith<ConfigError>(
        [&] { VaeConfig::FromDiffusersJson(ReplaceOnce(tiny, c.from, c.to)).Validate(); },
        c.message);
  }
  // Parse-time errors.
  ExpectThrowWith<ConfigError>(
      [&] {
        (void)VaeConfig::FromDiffusersJson(ReplaceOnce(tiny, "  \"decoder_causal\": false,\n", ""));
      },
      "missing required key(s) 'decoder_causal'");
  ExpectThrowWith<ConfigError>(
      [&] {
        (void)VaeConfig::FromDiffusersJson(
            ReplaceOnce(tiny, "\"patch_size\": 4,", "\"patch_size\": 4, \"sample_size\": 7,"));
      },
      "unknown key 'sample_size'");
  const VaeConfig lenient = VaeConfig::FromDiffusersJson(
      ReplaceOnce(tiny, "\"patch_size\": 4,", "\"patch_size\": 4, \"sample_size\": 7,"),
      /*allow_unknown_keys=*/true);
  EXPECT_EQ(lenient.ignored_keys, (std::vector<std::string>{"sample_size"}));
  ExpectThrowWith<ConfigError>(
      [&] {
        (void)VaeConfig::FromDiffusersJson(ReplaceOnce(
            tiny, "\"patch_size\": 4,", "\"patch_size\": 4, \"decoder_upsample_type\": [2],"));
      },
      "'decoder_upsample_type' must be null");
  ExpectThrowWith<ConfigError>(
      [&] {
        (void)VaeConfig::FromDiffusersJson(
            ReplaceOnce(tiny, "\"latent_channels\": 8", "\"latent_channels\": \"8\""));
      },
      "'latent_channels' is a string");
  ExpectThrowWith<ConfigError>([&] { (void)VaeConfig::FromDiffusersJson("{\"a\": }"); },
                               "config: json");
  // A VideoVae refuses an invalid config.
  ExpectThrowWith<ConfigError>(
      [&] {
        VideoVae vae(VaeConfig::FromDiffusersJson(ReplaceOnce(
            tiny, "\"timestep_conditioning\": false", "\"timestep_conditioning\": true")));
      },
      "timestep_conditioning");
}

TEST(VaeConfigTest, ParameterCountsFromTheConfig) {
  // ltx2-spec §1.10 / §5 invariant 10, counted from shapes (nothing is allocated).
  const VaeConfig full = VaeConfig::Preset("ltx2");
  EXPECT_EQ(VideoVae::EncoderParameterCount(full), 694098881);
  EXPECT_EQ(VideoVae::DecoderParameterCount(full), 528380720);
  EXPECT_EQ(VideoVae::ParameterCount(full), 1222479601);
  // Spot-check the per-part table: decoder.up_blocks.0.upsamplers.0 is 113,250,304.
  const auto shapes = VideoVae::ExpectedTensors(full);
  EXPECT_EQ(shapes.at("decoder.up_blocks.0.upsamplers.0.conv.conv.weight"),
            (std::vector<int64_t>{4096, 1024, 3, 3, 3}));
  EXPECT_EQ(shapes.at("encoder.conv_out.conv.weight"), (std::vector<int64_t>{129, 2048, 3, 3, 3}));
  EXPECT_EQ(shapes.at("encoder.down_blocks.0.downsamplers.0.conv.conv.weight"),
            (std::vector<int64_t>{64, 128, 3, 3, 3}));
  EXPECT_EQ(shapes.at("latents_std"), (std::vector<int64_t>{128}));
  // Encoder: conv_in, 18 down resnets, 4 downsamplers, 2 mid resnets, conv_out (46 convs);
  // decoder: conv_in, 5 mid resnets, 3 upsamplers, 15 up resnets, conv_out (45 convs).
  EXPECT_EQ(shapes.size(),
            2u * (1 + 18 * 2 + 4 + 2 * 2 + 1) + 2u * (1 + 5 * 2 + 3 + 15 * 2 + 1) + 2u);
  // The golden tiny preset (README §2.2) and the ltx2-spec §4.1 tiny config (other channels).
  const VaeConfig tiny = VaeConfig::Preset("tiny");
  EXPECT_EQ(VideoVae::EncoderParameterCount(tiny), 573269);
  EXPECT_EQ(VideoVae::DecoderParameterCount(tiny), 902832);
  std::string spec_tiny(VaePresetJson("tiny"));
  spec_tiny = ReplaceOnce(spec_tiny, "[16, 32, 64, 64]", "[16, 32, 64, 128]");
  spec_tiny = ReplaceOnce(spec_tiny, "\"layers_per_block\": [2, 1, 1, 1, 1]",
                          "\"layers_per_block\": [1, 1, 1, 1, 1]");
  spec_tiny = ReplaceOnce(spec_tiny, "\"decoder_layers_per_block\": [2, 1, 1, 1]",
                          "\"decoder_layers_per_block\": [1, 1, 1, 1]");
  const VaeConfig spec = VaeConfig::FromDiffusersJson(spec_tiny);
  EXPECT_EQ(VideoVae::EncoderParameterCount(spec), 1262861);
  EXPECT_EQ(VideoVae::DecoderParameterCount(spec), 899360);
  // Streaming cache at 704x1280 (22x40 latents): 297.6 M elements (ltx2-spec §1.8).
  EXPECT_EQ(VideoVae::StreamingCacheElements(full, 1, 22, 40), 297594880);
  EXPECT_EQ(VideoVae::StreamingCacheElements(full, 2, 22, 40), 2 * 297594880LL);
}

TEST(VaeConfigTest, LatentGeometry) {
  const VaeConfig full = VaeConfig::Preset("ltx2");
  EXPECT_EQ(full.spatial_ratio(), 32);
  EXPECT_EQ(full.temporal_ratio(), 8);
  EXPECT_EQ(full.LatentFrames(961), 121);
  EXPECT_EQ(full.LatentFrames(1), 1);
  EXPECT_EQ(full.PixelFrames(121), 961);
  EXPECT_EQ(full.PixelFrames(4), 25);
  EXPECT_EQ(full.LatentSize(704), 22);
  EXPECT_EQ(full.LatentSize(1280), 40);
  EXPECT_EQ(full.PixelSize(22), 704);
  EXPECT_EQ(full.latent_height(), 22);
  EXPECT_EQ(full.latent_width(), 40);
  ExpectThrowWith<InvalidInputError>([&] { (void)full.LatentFrames(960); },
                                     "pixel frame count 960 is not 1 + 8k");
  ExpectThrowWith<InvalidInputError>([&] { (void)full.LatentSize(700); },
                                     "pixel size 700 is not a positive multiple of 32");
}

// =============================================================================================
// Primitive ops (ltx2-spec §1.3, §5 invariants 6-8).

at::TensorOptions F32() { return at::TensorOptions().dtype(at::kFloat); }

TEST(VaeOpsTest, PixelNormIsTheChannelRmsNormAndScaleInvariant) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({2, 6, 3, 4, 5}, F32());
  const at::Tensor y = PixelNorm(x, 1e-8);
  const at::Tensor expected = x / at::sqrt(x.pow(2).mean(1, true) + 1e-8);
  EXPECT_TRUE(Close(y, expected, 1e-6, "formula"));
  for (const double alpha : {0.25, 7.0, 1000.0}) {
    EXPECT_TRUE(Close(PixelNorm(x * alpha, 1e-8), y, 1e-5, "alpha " + std::to_string(alpha)));
  }
  // The mean runs over channels only: every (b, t, h, w) has unit RMS.
  EXPECT_TRUE(Close(y.pow(2).mean(1), at::ones({2, 3, 4, 5}, F32()), 1e-5, "unit rms"));
  EXPECT_TRUE(Close(PixelNormSilu(x, 1e-8), at::silu(y), 1e-6, "silu"));
}

TEST(VaeOpsTest, PatchifyPutsTheWidthOffsetBeforeTheHeightOffset) {
  // Value = c*100 + (h mod 4)*10 + (w mod 4): patch channel c*16 + 4*j_w + j_h must be constant.
  const int64_t c = 3, t = 2, h = 8, w = 12, p = 4;
  const at::Tensor hh = at::arange(h, F32()).remainder(p).view({1, 1, 1, h, 1});
  const at::Tensor ww = at::arange(w, F32()).remainder(p).view({1, 1, 1, 1, w});
  const at::Tensor cc = at::arange(c, F32()).view({1, c, 1, 1, 1});
  const at::Tensor x = (cc * 100 + hh * 10 + ww).expand({1, c, t, h, w}).contiguous();
  const at::Tensor y = Patchify(x, p);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 48, 2, 2, 3}));
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t jw = 0; jw < p; ++jw) {
      for (int64_t jh = 0; jh < p; ++jh) {
        const at::Tensor plane = y.select(1, ch * 16 + 4 * jw + jh);
        EXPECT_TRUE(at::all(plane == static_cast<double>(ch * 100 + jh * 10 + jw)).item<bool>())
            << "c " << ch << " j_w " << jw << " j_h " << jh;
      }
    }
  }
  EXPECT_TRUE(Identical(Unpatchify(y, p), x, "unpatchify(patchify)"));
}

TEST(VaeOpsTest, SpaceToDepthOrdersTimeHeightWidth) {
  // Value = c*1000 + (t mod 2)*100 + (h mod 2)*10 + (w mod 2).
  const int64_t c = 2, t = 4, h = 6, w = 4;
  const at::Tensor x = (at::arange(c, F32()).view({1, c, 1, 1, 1}) * 1000 +
                        at::arange(t, F32()).remainder(2).view({1, 1, t, 1, 1}) * 100 +
                        at::arange(h, F32()).remainder(2).view({1, 1, 1, h, 1}) * 10 +
                        at::arange(w, F32()).remainder(2).view({1, 1, 1, 1, w}))
                           .contiguous();
  const at::Tensor y = SpaceToDepth(x, {2, 2, 2});
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 16, 2, 3, 2}));
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t it = 0; it < 2; ++it) {
      for (int64_t ih = 0; ih < 2; ++ih) {
        for (int64_t iw = 0; iw < 2; ++iw) {
          const at::Tensor plane = y.select(1, ((ch * 2 + it) * 2 + ih) * 2 + iw);
          EXPECT_TRUE(at::all(plane == static_cast<double>(ch * 1000 + it * 100 + ih * 10 + iw))
                          .item<bool>());
        }
      }
    }
  }
  EXPECT_TRUE(Identical(DepthToSpace(y, {2, 2, 2}), x, "depth_to_space(space_to_depth)"));
  EXPECT_TRUE(Identical(DepthToSpace(SpaceToDepth(x, {1, 2, 2}), {1, 2, 2}), x, "(1,2,2)"));
}

// The reference conv written out: explicit temporal padding, then PyTorch's own spatial padding.
at::Tensor ReferenceConv(const at::Tensor& x, const ConvParams& conv, TemporalPadding time,
                         SpatialPadding space) {
  const int64_t t = x.size(2);
  const at::Tensor first = x.narrow(2, 0, 1), last = x.narrow(2, t - 1, 1);
  const at::Tensor padded = time == TemporalPadding::kCausal ? at::cat({first, first, x}, 2)
                                                             : at::cat({first, x, last}, 2);
  if (space == SpatialPadding::kReflect) {
    return at::conv3d(at::reflection_pad3d(padded, {1, 1, 1, 1, 0, 0}), conv.weight, conv.bias);
  }
  return at::conv3d(padded, conv.weight, conv.bias, {1, 1, 1}, {0, 1, 1});
}

TEST(VaeOpsTest, CausalConvPaddingModes) {
  at::manual_seed(2);
  const ConvParams conv{at::randn({5, 4, 3, 3, 3}, F32()) * 0.2, at::randn({5}, F32())};
  for (const int64_t t : {int64_t{1}, int64_t{2}, int64_t{5}}) {
    const at::Tensor x = at::randn({2, 4, t, 3, 5}, F32());
    for (const auto time : {TemporalPadding::kCausal, TemporalPadding::kNonCausal}) {
      for (const auto space : {SpatialPadding::kZeros, SpatialPadding::kReflect}) {
        const std::string what = "T " + std::to_string(t) +
                                 (time == TemporalPadding::kCausal ? " causal" : " non-causal") +
                                 (space == SpatialPadding::kReflect ? " reflect" : " zeros");
        EXPECT_TRUE(Close(CausalConv3d(x, conv, time, space), ReferenceConv(x, conv, time, space),
                          1e-5, what));
      }
    }
  }
  // Piece by piece with the cache == the one-call causal conv (ltx2-spec §1.8); the cache always
  // holds the last 2 input frames (the first frame twice after a one-frame first call).
  const at::Tensor x = at::randn({1, 4, 9, 3, 5}, F32());
  at::Tensor cache;
  std::vector<at::Tensor> parts;
  for (const auto& [start, n] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 1}, {2, 1}, {3, 3}, {6, 1}, {7, 2}}) {
    SCOPED_TRACE("frames " + std::to_string(start) + "+" + std::to_string(n));
    parts.push_back(CausalConv3d(x.narrow(2, start, n), conv, TemporalPadding::kCausal,
                                 SpatialPadding::kReflect, &cache));
    const int64_t end = start + n;
    const at::Tensor last_two =
        end >= 2 ? x.narrow(2, end - 2, 2) : x.narrow(2, 0, 1).expand({1, 4, 2, 3, 5});
    EXPECT_TRUE(Identical(cache, last_two, "cache"));
  }
  EXPECT_TRUE(Close(at::cat(parts, 2),
                    ReferenceConv(x, conv, TemporalPadding::kCausal, SpatialPadding::kReflect),
                    1e-5, "cached"));
}

// Loop-written reference of the downsampler residual: prepend st-1 copies of frame 0, then
// channel o at (t, h, w) = mean over the g space-to-depth channels k in [o*g, (o+1)*g), where k =
// ((c*st + i_t)*sh + i_h)*sw + i_w reads x[c, st*t + i_t, sh*h + i_h, sw*w + i_w].
at::Tensor ReferenceDownsampleResidual(const at::Tensor& x, const std::array<int64_t, 3>& s,
                                       int64_t out_channels) {
  const at::Tensor seq =
      s[0] > 1 ? at::cat({x.narrow(2, 0, s[0] - 1), x}, 2).contiguous() : x.contiguous();
  const int64_t c = x.size(1), t = seq.size(2) / s[0], h = x.size(3) / s[1], w = x.size(4) / s[2];
  const int64_t group = c * s[0] * s[1] * s[2] / out_channels;
  at::Tensor out = at::zeros({1, out_channels, t, h, w}, F32());
  const auto in = seq.accessor<float, 5>();
  auto acc = out.accessor<float, 5>();
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t k = o * group; k < (o + 1) * group; ++k) {
      const int64_t iw = k % s[2], ih = (k / s[2]) % s[1], it = (k / (s[2] * s[1])) % s[0];
      const int64_t ch = k / (s[0] * s[1] * s[2]);
      for (int64_t tt = 0; tt < t; ++tt) {
        for (int64_t hh = 0; hh < h; ++hh) {
          for (int64_t ww = 0; ww < w; ++ww) {
            acc[0][o][tt][hh][ww] += in[0][ch][s[0] * tt + it][s[1] * hh + ih][s[2] * ww + iw] /
                                     static_cast<float>(group);
          }
        }
      }
    }
  }
  return out;
}

TEST(VaeOpsTest, DownsamplerWithZeroedConvIsTheGroupMean) {
  at::manual_seed(3);
  struct Case {
    std::array<int64_t, 3> stride;
    int64_t in_channels, out_channels, frames;
  };
  // The three LTX-2.0 kinds, groups 2, 1, 4 and 8 (README §2.2), odd and single-frame T.
  for (const Case& c : std::vector<Case>{{{1, 2, 2}, 8, 16, 3},
                                         {{2, 1, 1}, 16, 32, 3},
                                         {{2, 2, 2}, 32, 64, 5},
                                         {{2, 2, 2}, 64, 64, 1}}) {
    SCOPED_TRACE("stride " + std::to_string(c.stride[0]) + std::to_string(c.stride[1]) +
                 std::to_string(c.stride[2]) + " T " + std::to_string(c.frames));
    const int64_t prod = c.stride[0] * c.stride[1] * c.stride[2];
    const ConvParams zero{at::zeros({c.out_channels / prod, c.in_channels, 3, 3, 3}, F32()),
                          at::zeros({c.out_channels / prod}, F32())};
    const at::Tensor x = at::randn({1, c.in_channels, c.frames, 4, 6}, F32());
    const at::Tensor y = Downsample(x, zero, c.stride, c.out_channels, TemporalPadding::kCausal,
                                    SpatialPadding::kZeros);
    EXPECT_TRUE(
        Close(y, ReferenceDownsampleResidual(x, c.stride, c.out_channels), 1e-6, "residual"));
    // With a real conv the main path adds space-to-depth of the causal conv of the padded clip.
    const ConvParams conv{at::randn(zero.weight.sizes(), F32()) * 0.1,
                          at::randn(zero.bias.sizes(), F32())};
    const at::Tensor seq = c.stride[0] > 1 ? at::cat({x.narrow(2, 0, 1), x}, 2) : x;
    const at::Tensor main = SpaceToDepth(
        ReferenceConv(seq, conv, TemporalPadding::kCausal, SpatialPadding::kZeros), c.stride);
    EXPECT_TRUE(Close(Downsample(x, conv, c.stride, c.out_channels, TemporalPadding::kCausal,
                                 SpatialPadding::kZeros),
                      main + ReferenceDownsampleResidual(x, c.stride, c.out_channels), 1e-5,
                      "main + residual"));
  }
}

TEST(VaeOpsTest, UpsamplerWithZeroedConvIsTheTiledDepthToSpace) {
  at::manual_seed(4);
  const int64_t c = 16, factor = 2;
  const ConvParams zero{at::zeros({c * 8 / factor, c, 3, 3, 3}, F32()),
                        at::zeros({c * 8 / factor}, F32())};
  for (const int64_t t : {int64_t{1}, int64_t{3}}) {
    const at::Tensor x = at::randn({1, c, t, 3, 4}, F32());
    // Loop reference: out[k, T, H, W] = x[((k mod C/8)*2 + i_t)*2 + i_h)*2 + i_w, ...] at
    // T = 2t + i_t (before the drop), H = 2h + i_h, W = 2w + i_w.
    at::Tensor expected = at::zeros({1, c / factor, 2 * t, 6, 8}, F32());
    auto acc = expected.accessor<float, 5>();
    const auto in = x.accessor<float, 5>();
    for (int64_t k = 0; k < c / factor; ++k) {
      for (int64_t tt = 0; tt < 2 * t; ++tt) {
        for (int64_t hh = 0; hh < 6; ++hh) {
          for (int64_t ww = 0; ww < 8; ++ww) {
            const int64_t src = (((k % (c / 8)) * 2 + tt % 2) * 2 + hh % 2) * 2 + ww % 2;
            acc[0][k][tt][hh][ww] = in[0][src][tt / 2][hh / 2][ww / 2];
          }
        }
      }
    }
    const at::Tensor dropped = Upsample(x, zero, factor, /*residual=*/true, /*drop_first=*/true,
                                        TemporalPadding::kCausal, SpatialPadding::kReflect);
    EXPECT_TRUE(Identical(dropped, expected.narrow(2, 1, 2 * t - 1), "T " + std::to_string(t)));
    const at::Tensor kept = Upsample(x, zero, factor, true, /*drop_first=*/false,
                                     TemporalPadding::kCausal, SpatialPadding::kReflect);
    EXPECT_TRUE(Identical(kept, expected, "no drop, T " + std::to_string(t)));
    // Without the residual and with a real conv: depth-to-space of the conv, first frame dropped.
    const ConvParams conv{at::randn(zero.weight.sizes(), F32()) * 0.1,
                          at::randn(zero.bias.sizes(), F32())};
    const at::Tensor main = DepthToSpace(
        ReferenceConv(x, conv, TemporalPadding::kNonCausal, SpatialPadding::kReflect), {2, 2, 2});
    EXPECT_TRUE(Close(Upsample(x, conv, factor, /*residual=*/false, true,
                               TemporalPadding::kNonCausal, SpatialPadding::kReflect),
                      main.narrow(2, 1, 2 * t - 1), 1e-5, "main path"));
    EXPECT_TRUE(Close(Upsample(x, conv, factor, /*residual=*/true, true,
                               TemporalPadding::kNonCausal, SpatialPadding::kReflect),
                      (main + expected).narrow(2, 1, 2 * t - 1), 1e-5, "main + residual"));
  }
}

// =============================================================================================
// Dummy weights, pixel I/O.

TEST(VaeDummyWeightsTest, FollowTheGoldenInitRulesDeterministically) {
  const VaeConfig tiny = VaeConfig::Preset("tiny");
  VideoVae a(tiny), b(tiny), c(tiny);
  a.InitDummyWeights(7);
  b.InitDummyWeights(7);
  c.InitDummyWeights(8);
  EXPECT_TRUE(a.loaded());
  EXPECT_EQ(a.ParameterCount(), 573269 + 902832);
  int64_t values = 0;
  for (const auto& [name, shape] : VideoVae::ExpectedTensors(tiny)) {
    ASSERT_EQ(a.Parameter(name).sizes(), c10::IntArrayRef(shape)) << name;
    EXPECT_TRUE(Identical(a.Parameter(name), b.Parameter(name), name));
    EXPECT_FALSE(at::equal(a.Parameter(name), c.Parameter(name))) << name;
    values += a.Parameter(name).numel();
  }
  EXPECT_EQ(values, 573269 + 902832 + 16);
  // N(0,1)/sqrt(fan_in) on the largest tensor (442,368 values), 0.1*N biases, exp(0.3*N) stds.
  const at::Tensor w = a.Parameter("decoder.up_blocks.0.upsamplers.0.conv.conv.weight");
  EXPECT_NEAR(w.std().item<double>() * std::sqrt(64.0 * 27), 1.0, 0.01);
  EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.001);
  at::Tensor biases = at::cat({a.Parameter("decoder.up_blocks.0.upsamplers.0.conv.conv.bias"),
                               a.Parameter("decoder.up_blocks.1.upsamplers.0.conv.conv.bias"),
                               a.Parameter("decoder.conv_in.conv.bias")});
  EXPECT_NEAR(biases.std().item<double>(), 0.1, 0.02);
  EXPECT_GT(a.Parameter("latents_std").min().item<double>(), 0.0);
  EXPECT_NEAR(a.Parameter("latents_std").log().std().item<double>(), 0.3, 0.15);
  // A bf16 VAE holds the rounded fp32 values; encode + decode run and stay finite.
  VideoVae half(tiny, at::kBFloat16);
  half.InitDummyWeights(7);
  EXPECT_TRUE(Identical(half.Parameter("encoder.conv_in.conv.weight"),
                        a.Parameter("encoder.conv_in.conv.weight").to(at::kBFloat16), "bf16"));
  const at::Tensor z = a.Encode(at::rand({1, 3, 9, 64, 64}, F32()) * 2 - 1);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{1, 8, 2, 2, 2}));
  const at::Tensor pixels = a.DecodeCausal(z);
  EXPECT_EQ(pixels.sizes(), (std::vector<int64_t>{1, 3, 9, 64, 64}));
  EXPECT_TRUE(at::isfinite(pixels).all().item<bool>());
  // SetParameter writes through to the bound convs.
  a.SetParameter("decoder.conv_out.conv.weight", at::zeros({48, 8, 3, 3, 3}, F32()));
  a.SetParameter("decoder.conv_out.conv.bias", at::full({48}, 0.25, F32()));
  EXPECT_TRUE(
      Close(a.DecodeCausal(z), at::full({1, 3, 9, 64, 64}, 0.25, F32()), 0, "zeroed conv_out"));
  ExpectThrowWith<std::invalid_argument>(
      [&] { a.SetParameter("decoder.conv_out.conv.bias", at::zeros({47}, F32())); },
      "'decoder.conv_out.conv.bias' has shape [48], got [47]");
}

TEST(VaeDummyWeightsTest, LongStreamsEqualTheOneCallCausalDecode) {
  // ltx2-spec §5 invariant 4 beyond the golden's 3 latent frames, and with batch 2: one-frame
  // calls after one-frame calls exercise the cache's carry-forward.
  auto vae = std::make_shared<VideoVae>(VaeConfig::Preset("tiny"));
  vae->InitDummyWeights(11);
  at::manual_seed(7);
  const at::Tensor z = at::randn({2, 8, 7, 2, 3}, F32());
  const at::Tensor reference = vae->DecodeCausal(z);
  ASSERT_EQ(reference.sizes(), (std::vector<int64_t>{2, 3, 49, 64, 96}));
  for (const auto& chunks :
       std::vector<std::vector<int64_t>>{{1, 1, 1, 1, 1, 1, 1}, {4, 3}, {1, 3, 3}}) {
    CausalStreamingDecoder decoder(vae);
    std::vector<at::Tensor> parts;
    int64_t start = 0;
    for (const int64_t n : chunks) {
      parts.push_back(decoder.DecodeChunk(z.narrow(2, start, n)));
      start += n;
    }
    EXPECT_TRUE(
        Close(at::cat(parts, 2), reference, 1e-5, "chunks of " + std::to_string(chunks[0])));
    EXPECT_EQ(decoder.CacheBytes(), VideoVae::StreamingCacheElements(vae->config(), 2, 2, 3) * 4);
  }
}

TEST(VaePixelsTest, ToUint8RoundsAndClamps) {
  const at::Tensor x =
      at::tensor({-2.0, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 3.0}, F32()).view({1, 1, 1, 1, 8});
  const at::Tensor y = ToUint8Rgb(x);
  EXPECT_EQ(y.scalar_type(), at::kByte);
  const std::vector<int64_t> expected = {0, 0, 0, 128, 191, 255, 255, 255};
  for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(y.flatten()[i].item<int64_t>(), expected[i]) << i;
  EXPECT_TRUE(Identical(ToUint8Rgb(x.to(at::kBFloat16)), y, "bf16 input"));

  at::manual_seed(5);
  const at::Tensor pixels = at::rand({2, 3, 4, 5, 6}, F32()) * 2.2 - 1.1;
  const at::Tensor frames = ToUint8Frames(pixels, 1);
  ASSERT_EQ(frames.sizes(), (std::vector<int64_t>{4, 5, 6, 3}));
  EXPECT_TRUE(frames.is_contiguous());
  EXPECT_TRUE(Identical(frames, ToUint8Rgb(pixels)[1].permute({1, 2, 3, 0}), "layout"));
  EXPECT_EQ(frames[2][3][4][1].item<int64_t>(), ToUint8Rgb(pixels)[1][1][2][3][4].item<int64_t>());
  ExpectThrowWith<InvalidInputError>([&] { (void)ToUint8Frames(pixels, 2); }, "out of range");
  ExpectThrowWith<InvalidInputError>([&] { (void)ToUint8Frames(pixels.select(0, 0)); },
                                     "expected (B, 3, T, H, W)");
}

}  // namespace
}  // namespace wmserve::worker::ltx2
