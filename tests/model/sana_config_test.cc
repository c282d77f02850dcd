// Tests for SanaConfig (worker/models/sana/sana_config.h): the two presets (file == compiled-in
// copy, derived values per spec §1.1 / §1.6 / §9 and the golden README §2), reading the golden
// files' `config` metadata, the JSON round trip, and Validate()'s messages.
#include "tests/model/model_test_util.h"
#include "worker/models/sana/sana_config.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::sana {
namespace {

using test_util::SanaGoldenDir;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadSource(const std::string& relative) {
  std::ifstream in(std::string(WMSERVE_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

TEST(SanaConfig, PresetFilesMatchTheCompiledInCopies) {
  for (const std::string& name : PresetNames()) {
    SCOPED_TRACE(name);
    const std::string file = ReadSource("worker/models/sana/presets/" + name + ".json");
    ASSERT_FALSE(file.empty());
    EXPECT_EQ(file, std::string(PresetJson(name)));
    EXPECT_NO_THROW(SanaConfig::FromFile(std::string(WMSERVE_SOURCE_DIR) +
                                         "/worker/models/sana/presets/" + name + ".json"));
  }
  EXPECT_THROW(PresetJson("huge"), ConfigError);
}

TEST(SanaConfig, TinyPresetDerivedValues) {
  const SanaConfig c = SanaConfig::Preset("tiny");
  EXPECT_EQ(c.name, "tiny");
  EXPECT_EQ(c.depth(), 8);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_heads(), 4);
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_EQ(c.cross_head_dim(), 16);
  EXPECT_EQ(c.out_channels(), 8);
  EXPECT_EQ(c.ffn_hidden_features(), 192);
  EXPECT_THAT(c.SoftmaxBlocks(), ElementsAre(3, 7));
  EXPECT_TRUE(c.HasShortConv(0));
  EXPECT_FALSE(c.HasShortConv(3));
  EXPECT_TRUE(c.HasPluckerProj(7));
  const RopeSplit rope = c.rope_split();
  EXPECT_EQ(rope.t, 4);
  EXPECT_EQ(rope.h, 2);
  EXPECT_EQ(rope.w, 2);
  EXPECT_THAT(c.CameraRopePairIndices(), ElementsAre(0, 1, 4, 6));
  EXPECT_EQ(c.ucpe_groups_per_head(), 2);
  EXPECT_EQ(c.latent_height(), 2);
  EXPECT_EQ(c.latent_width(), 4);
  EXPECT_EQ(c.tokens_per_frame(), 8);
  EXPECT_NEAR(c.gdn_key_scale(), 0.0883883, 1e-7);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 0.25);
  EXPECT_DOUBLE_EQ(c.camera_softmax_scale_bidirectional(), 1.0 / std::sqrt(128.0));
  EXPECT_EQ(c.LatentFrames(49), 7);
  EXPECT_EQ(c.caption_channels, 32);
  EXPECT_EQ(c.model_max_length, 8);
}

TEST(SanaConfig, ReleasePresetParsesAndValidates) {
  const SanaConfig c = SanaConfig::Preset("sana-wm-2.6b");
  EXPECT_EQ(c.name, "sana-wm-2.6b");
  EXPECT_EQ(c.depth(), 20);
  EXPECT_EQ(c.hidden_size, 2240);
  EXPECT_EQ(c.num_heads(), 20);
  EXPECT_EQ(c.head_dim(), 112);
  EXPECT_EQ(c.num_attention_heads, 20);
  EXPECT_EQ(c.cross_head_dim(), 112);
  EXPECT_EQ(c.in_channels, 128);
  EXPECT_EQ(c.ffn_hidden_features(), 6720);
  EXPECT_THAT(c.SoftmaxBlocks(), ElementsAre(3, 7, 11, 15, 19));
  const RopeSplit rope = c.rope_split();
  EXPECT_EQ(rope.t, 20);
  EXPECT_EQ(rope.h, 18);
  EXPECT_EQ(rope.w, 18);
  const RopeSplit cam = c.camera_rope_split();
  EXPECT_EQ(cam.t, 10);
  EXPECT_EQ(cam.h, 9);
  EXPECT_EQ(cam.w, 9);
  std::vector<int> expected;
  for (int i = 0; i < 10; ++i) expected.push_back(i);
  for (int i = 20; i < 29; ++i) expected.push_back(i);
  for (int i = 38; i < 47; ++i) expected.push_back(i);
  EXPECT_EQ(c.CameraRopePairIndices(), expected);
  EXPECT_EQ(c.ucpe_groups_per_head(), 14);
  EXPECT_EQ(c.latent_height(), 22);
  EXPECT_EQ(c.latent_width(), 40);
  EXPECT_EQ(c.tokens_per_frame(), 880);
  EXPECT_NEAR(c.gdn_key_scale(), 3.185e-3, 1e-6);
  EXPECT_DOUBLE_EQ(c.camera_softmax_scale_bidirectional(), 1.0 / std::sqrt(128.0));
  EXPECT_EQ(c.caption_channels, 2304);
  EXPECT_EQ(c.model_max_length, 300);
  EXPECT_EQ(c.chunk_plucker_channels, 48);
  EXPECT_EQ(c.t_kernel_size, 3);
  EXPECT_EQ(c.LatentFrames(961), 121);
  // The defaults of a bare SanaConfig are the release too.
  EXPECT_EQ(SanaConfig().ToJson(), c.ToJson());
}

TEST(SanaConfig, ReadsTheGoldenConfigMetadata) {
  const std::string path = SanaGoldenDir() + "/weights.safetensors";
  if (!std::ifstream(path).good()) {
    GTEST_SKIP() << "golden data not found in " << SanaGoldenDir() << " (set WMSERVE_GOLDEN_ROOT)";
  }
  const SafetensorsFile f = SafetensorsFile::Open(path);
  // The golden JSON has only diffusers keys; the tiny grid comes from the tiny defaults.
  SanaConfig c = SanaConfig::FromDiffusersJson(f.Metadata("config"), SanaConfig::Preset("tiny"));
  EXPECT_NO_THROW(c.Validate());
  EXPECT_EQ(c.ToJson(), SanaConfig::Preset("tiny").ToJson());
  // With release defaults only the wmserve extensions differ.
  SanaConfig d = SanaConfig::FromDiffusersJson(f.Metadata("config"));
  d.Validate();
  EXPECT_EQ(d.hidden_size, 64);
  EXPECT_EQ(d.num_layers, 8);
  EXPECT_EQ(d.linear_head_dim, 16);
  EXPECT_EQ(d.in_channels, 8);
  EXPECT_EQ(d.latent_height(), 22);
}

TEST(SanaConfig, JsonRoundTrip) {
  SanaConfig c = SanaConfig::Preset("tiny");
  c.mlp_ratio = 2.5;
  c.y_norm_scale_factor = 0.125;
  c.pos_embed_type = "casual_wan_rope";
  const SanaConfig back = SanaConfig::FromDiffusersJson(c.ToJson());
  EXPECT_EQ(back.ToJson(), c.ToJson());
  EXPECT_DOUBLE_EQ(back.mlp_ratio, 2.5);
  EXPECT_EQ(back.mlp_acts[2], "");
}

TEST(SanaConfig, UnknownAndMistypedKeys) {
  try {
    SanaConfig::FromDiffusersJson(R"({"num_layers": 8, "sigma_hat": 1, "zz": 2, "_x": 3})");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("unknown keys 'sigma_hat', 'zz'"));
  }
  const SanaConfig lenient = SanaConfig::FromDiffusersJson(R"({"zz": 2, "_class_name": "X"})",
                                                           SanaConfig(), /*allow_unknown_keys=*/true);
  EXPECT_THAT(lenient.ignored_keys, ElementsAre("zz"));
  try {
    SanaConfig::FromDiffusersJson(R"({"num_layers": "8"})");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "config: 'num_layers' is a string, expected an integer");
  }
  EXPECT_THROW(SanaConfig::FromDiffusersJson(R"({"hidden_size": 64.5})"), ConfigError);
  EXPECT_THROW(SanaConfig::FromDiffusersJson(R"({"patch_size": [1, 1]})"), ConfigError);
  EXPECT_THROW(SanaConfig::FromDiffusersJson(R"({"mlp_acts": ["silu"]})"), ConfigError);
  EXPECT_THROW(SanaConfig::FromDiffusersJson("[1]"), ConfigError);
  try {
    SanaConfig::FromDiffusersJson("{\"a\": }");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("config: json: line 1, column 7"));
  }
  EXPECT_EQ(SanaConfig::FromDiffusersJson(R"({"patch_size": 1})").patch_size[2], 1);
}

TEST(SanaConfig, ValidateListsEveryViolation) {
  SanaConfig c = SanaConfig::Preset("tiny");
  c.linear_head_dim = 12;  // 64 % 12 != 0, 12 % 8 != 0
  c.softmax_every_n = 9;   // > depth 8
  c.ffn_type = "Mlp";
  c.qk_norm = false;
  c.chunk_plucker_channels = 40;
  try {
    c.Validate();
    FAIL();
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_THAT(m, HasSubstr("config 'tiny': 6 errors: "));
    EXPECT_THAT(m, HasSubstr("hidden_size 64 is not divisible by linear_head_dim 12"));
    EXPECT_THAT(m, HasSubstr("linear_head_dim 12 must be a multiple of 8"));
    EXPECT_THAT(m, HasSubstr("softmax_every_n 9 must be in [1, num_layers=8]"));
    EXPECT_THAT(m, HasSubstr("ffn_type 'Mlp' is not implemented (supported: 'GLUMBConvTemp')"));
    EXPECT_THAT(m, HasSubstr("qk_norm = false is not implemented"));
    EXPECT_THAT(m, HasSubstr("chunk_plucker_channels 40 must be 6 x the VAE temporal stride (48)"));
  }
  SanaConfig tiny_head = SanaConfig::Preset("tiny");
  tiny_head.hidden_size = 32;
  tiny_head.num_attention_heads = 4;
  tiny_head.linear_head_dim = 8;  // camera half head 4: floor(4/6) = 0
  EXPECT_THROW(tiny_head.Validate(), ConfigError);
  SanaConfig zero_every = SanaConfig::Preset("tiny");
  zero_every.softmax_every_n = 0;
  EXPECT_THROW(zero_every.Validate(), ConfigError);
  SanaConfig patch = SanaConfig::Preset("tiny");
  patch.patch_size = {1, 2, 2};
  EXPECT_THROW(patch.Validate(), ConfigError);
}

}  // namespace
}  // namespace wmserve::worker::sana
