#include "worker/models/sana/config_json.h"
#include "worker/models/ltx2/vae_config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/json.h"

namespace wmserve::worker::ltx2 {
namespace {

// Byte-identical copies of presets/vae_tiny.json and presets/vae_ltx2.json (a test checks).
constexpr std::string_view kTinyPresetJson = R"json({
  "_class_name": "AutoencoderKLLTX2Video",
  "wmserve_preset": "tiny",
  "in_channels": 3,
  "out_channels": 3,
  "latent_channels": 8,
  "block_out_channels": [16, 32, 64, 64],
  "down_block_types": ["LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D"],
  "decoder_block_out_channels": [16, 32, 64],
  "layers_per_block": [2, 1, 1, 1, 1],
  "decoder_layers_per_block": [2, 1, 1, 1],
  "spatio_temporal_scaling": [true, true, true, true],
  "decoder_spatio_temporal_scaling": [true, true, true],
  "decoder_inject_noise": [false, false, false, false],
  "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
  "upsample_type": ["spatiotemporal", "spatiotemporal", "spatiotemporal"],
  "upsample_residual": [true, true, true],
  "upsample_factor": [2, 2, 2],
  "timestep_conditioning": false,
  "patch_size": 4,
  "patch_size_t": 1,
  "resnet_norm_eps": 1e-06,
  "scaling_factor": 1.0,
  "encoder_causal": true,
  "decoder_causal": false,
  "encoder_spatial_padding_mode": "zeros",
  "decoder_spatial_padding_mode": "reflect",
  "spatial_compression_ratio": 32,
  "temporal_compression_ratio": 8,
  "wmserve_pixel_size": [704, 1280]
}
)json";

constexpr std::string_view kLtx2PresetJson = R"json({
  "_class_name": "AutoencoderKLLTX2Video",
  "wmserve_preset": "ltx2",
  "in_channels": 3,
  "out_channels": 3,
  "latent_channels": 128,
  "block_out_channels": [256, 512, 1024, 2048],
  "down_block_types": ["LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D"],
  "decoder_block_out_channels": [256, 512, 1024],
  "layers_per_block": [4, 6, 6, 2, 2],
  "decoder_layers_per_block": [5, 5, 5, 5],
  "spatio_temporal_scaling": [true, true, true, true],
  "decoder_spatio_temporal_scaling": [true, true, true],
  "decoder_inject_noise": [false, false, false, false],
  "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
  "upsample_type": ["spatiotemporal", "spatiotemporal", "spatiotemporal"],
  "upsample_residual": [true, true, true],
  "upsample_factor": [2, 2, 2],
  "timestep_conditioning": false,
  "patch_size": 4,
  "patch_size_t": 1,
  "resnet_norm_eps": 1e-06,
  "scaling_factor": 1.0,
  "encoder_causal": true,
  "decoder_causal": false,
  "encoder_spatial_padding_mode": "zeros",
  "decoder_spatial_padding_mode": "reflect",
  "spatial_compression_ratio": 32,
  "temporal_compression_ratio": 8,
  "wmserve_pixel_size": [704, 1280]
}
)json";

using sana::CheckUnknownKeys;
using sana::ConfigInt;
using sana::ParseConfigObject;
using sana::ReadConfigFile;
using sana::ThrowConfigJsonError;
using sana::ConfigError;
using sana::InvalidInputError;
using sana::JsonError;
using sana::JsonQuote;
using sana::JsonValue;

// Keys whose diffusers defaults must not be assumed (see the header).
constexpr const char* kRequiredKeys[] = {"latent_channels",
                                         "block_out_channels",
                                         "layers_per_block",
                                         "downsample_type",
                                         "decoder_block_out_channels",
                                         "decoder_layers_per_block",
                                         "patch_size",
                                         "encoder_causal",
                                         "decoder_causal",
                                         "encoder_spatial_padding_mode",
                                         "decoder_spatial_padding_mode"};

std::string Num(double v) {
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}

std::vector<int> ToIntList(const JsonValue& v, const std::string& key) {
  std::vector<int> out;
  const auto& items = v.AsArray("'" + key + "'");
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(ConfigInt(items[i], key + "[" + std::to_string(i) + "]"));
  }
  return out;
}

std::vector<bool> ToBoolList(const JsonValue& v, const std::string& key) {
  std::vector<bool> out;
  const auto& items = v.AsArray("'" + key + "'");
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(items[i].AsBool("'" + key + "[" + std::to_string(i) + "]'"));
  }
  return out;
}

std::vector<std::string> ToStringList(const JsonValue& v, const std::string& key) {
  std::vector<std::string> out;
  const auto& items = v.AsArray("'" + key + "'");
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(items[i].AsString("'" + key + "[" + std::to_string(i) + "]'"));
  }
  return out;
}

std::string JoinInts(const std::vector<int>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

std::string JoinBools(const std::vector<bool>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    out += std::string(i ? ", " : "") + (values[i] ? "true" : "false");
  }
  return out + "]";
}

std::string JoinStrings(const std::vector<std::string>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + JsonQuote(values[i]);
  return out + "]";
}

// Entry i of `values` read back to front: the decoder builds its modules from reversed tuples.
template <typename T>
T Reversed(const std::vector<T>& values, int i) {
  return values.at(values.size() - 1 - static_cast<size_t>(i));
}

}  // namespace

std::string_view VaePresetJson(std::string_view name) {
  if (name == "tiny") return kTinyPresetJson;
  if (name == "ltx2" || name == "full") return kLtx2PresetJson;
  throw ConfigError("config: unknown VAE preset '" + std::string(name) +
                    "' (known: tiny, ltx2, full)");
}

std::vector<std::string> VaePresetNames() { return {"tiny", "ltx2"}; }

VaeConfig VaeConfig::FromDiffusersJson(std::string_view json, bool allow_unknown_keys) {
  const JsonValue doc = ParseConfigObject(json);
  VaeConfig c;
  c.name = "custom";  // unless wmserve_preset names it
  std::set<std::string> seen;
  std::vector<std::string> unknown;
  try {
    for (const auto& [key, v] : doc.AsObject()) {
      const std::string q = "'" + key + "'";
      if (!key.empty() && key[0] == '_') continue;
      seen.insert(key);
      if (key == "wmserve_preset") {
        c.name = v.AsString(q);
      } else if (key == "wmserve_pixel_size") {
        const std::vector<int> hw = ToIntList(v, key);
        if (hw.size() != 2) {
          throw ConfigError("config: 'wmserve_pixel_size' has " + std::to_string(hw.size()) +
                            " entries, expected 2 ([H, W])");
        }
        c.pixel_height = hw[0];
        c.pixel_width = hw[1];
      } else if (key == "in_channels") {
        c.in_channels = ConfigInt(v, key);
      } else if (key == "out_channels") {
        c.out_channels = ConfigInt(v, key);
      } else if (key == "latent_channels") {
        c.latent_channels = ConfigInt(v, key);
      } else if (key == "block_out_channels") {
        c.block_out_channels = ToIntList(v, key);
      } else if (key == "down_block_types") {
        c.down_block_types = ToStringList(v, key);
      } else if (key == "layers_per_block") {
        c.layers_per_block = ToIntList(v, key);
      } else if (key == "spatio_temporal_scaling") {
        c.spatio_temporal_scaling = ToBoolList(v, key);
      } else if (key == "downsample_type") {
        c.downsample_type = ToStringList(v, key);
      } else if (key == "decoder_block_out_channels") {
        c.decoder_block_out_channels = ToIntList(v, key);
      } else if (key == "decoder_layers_per_block") {
        c.decoder_layers_per_block = ToIntList(v, key);
      } else if (key == "decoder_spatio_temporal_scaling") {
        c.decoder_spatio_temporal_scaling = ToBoolList(v, key);
      } else if (key == "decoder_inject_noise") {
        c.decoder_inject_noise = ToBoolList(v, key);
      } else if (key == "upsample_type") {
        c.upsample_type = ToStringList(v, key);
      } else if (key == "decoder_upsample_type") {
        // SANA's causal class: null means stride (2,2,2) in every up block, which is what
        // upsample_type already says. Its non-null forms are not documented; refuse them.
        if (!v.is_null()) {
          throw ConfigError(
              "config: 'decoder_upsample_type' must be null (only the default "
              "(2,2,2) up-sampling is implemented)");
        }
      } else if (key == "upsample_residual") {
        c.upsample_residual = ToBoolList(v, key);
      } else if (key == "upsample_factor") {
        c.upsample_factor = ToIntList(v, key);
      } else if (key == "timestep_conditioning") {
        c.timestep_conditioning = v.AsBool(q);
      } else if (key == "patch_size") {
        c.patch_size = ConfigInt(v, key);
      } else if (key == "patch_size_t") {
        c.patch_size_t = ConfigInt(v, key);
      } else if (key == "resnet_norm_eps") {
        c.resnet_norm_eps = v.AsDouble(q);
      } else if (key == "scaling_factor") {
        c.scaling_factor = v.AsDouble(q);
      } else if (key == "encoder_causal") {
        c.encoder_causal = v.AsBool(q);
      } else if (key == "decoder_causal") {
        c.decoder_causal = v.AsBool(q);
      } else if (key == "encoder_spatial_padding_mode") {
        c.encoder_spatial_padding_mode = v.AsString(q);
      } else if (key == "decoder_spatial_padding_mode") {
        c.decoder_spatial_padding_mode = v.AsString(q);
      } else if (key == "spatial_compression_ratio") {
        c.spatial_compression_ratio = ConfigInt(v, key);
      } else if (key == "temporal_compression_ratio") {
        c.temporal_compression_ratio = ConfigInt(v, key);
      } else {
        unknown.push_back(key);
      }
    }
  } catch (const JsonError& e) {
    ThrowConfigJsonError(e);
  }
  std::string missing;
  for (const char* key : kRequiredKeys) {
    if (!seen.count(key)) missing += (missing.empty() ? "'" : ", '") + std::string(key) + "'";
  }
  if (!missing.empty()) {
    throw ConfigError("config: missing required key(s) " + missing +
                      " (AutoencoderKLLTX2Video's defaults are not assumed)");
  }
  c.ignored_keys =
      CheckUnknownKeys(std::move(unknown), allow_unknown_keys, "AutoencoderKLLTX2Video");
  return c;
}

VaeConfig VaeConfig::Preset(std::string_view name) {
  VaeConfig c = FromDiffusersJson(VaePresetJson(name));
  c.Validate();
  return c;
}

VaeConfig VaeConfig::FromFile(const std::string& path) {
  VaeConfig c;
  try {
    c = FromDiffusersJson(ReadConfigFile(path));
    c.Validate();
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  return c;
}

std::string VaeConfig::ToJson() const {
  std::vector<std::pair<std::string, std::string>> kv;
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  kv.emplace_back("_class_name", JsonQuote("AutoencoderKLLTX2Video"));
  kv.emplace_back("wmserve_preset", JsonQuote(name));
  kv.emplace_back("in_channels", std::to_string(in_channels));
  kv.emplace_back("out_channels", std::to_string(out_channels));
  kv.emplace_back("latent_channels", std::to_string(latent_channels));
  kv.emplace_back("block_out_channels", JoinInts(block_out_channels));
  kv.emplace_back("down_block_types", JoinStrings(down_block_types));
  kv.emplace_back("decoder_block_out_channels", JoinInts(decoder_block_out_channels));
  kv.emplace_back("layers_per_block", JoinInts(layers_per_block));
  kv.emplace_back("decoder_layers_per_block", JoinInts(decoder_layers_per_block));
  kv.emplace_back("spatio_temporal_scaling", JoinBools(spatio_temporal_scaling));
  kv.emplace_back("decoder_spatio_temporal_scaling", JoinBools(decoder_spatio_temporal_scaling));
  kv.emplace_back("decoder_inject_noise", JoinBools(decoder_inject_noise));
  kv.emplace_back("downsample_type", JoinStrings(downsample_type));
  kv.emplace_back("upsample_type", JoinStrings(upsample_type));
  kv.emplace_back("upsample_residual", JoinBools(upsample_residual));
  kv.emplace_back("upsample_factor", JoinInts(upsample_factor));
  kv.emplace_back("timestep_conditioning", b(timestep_conditioning));
  kv.emplace_back("patch_size", std::to_string(patch_size));
  kv.emplace_back("patch_size_t", std::to_string(patch_size_t));
  kv.emplace_back("resnet_norm_eps", JsonValue::Number(resnet_norm_eps).Dump());
  kv.emplace_back("scaling_factor", JsonValue::Number(scaling_factor).Dump());
  kv.emplace_back("encoder_causal", b(encoder_causal));
  kv.emplace_back("decoder_causal", b(decoder_causal));
  kv.emplace_back("encoder_spatial_padding_mode", JsonQuote(encoder_spatial_padding_mode));
  kv.emplace_back("decoder_spatial_padding_mode", JsonQuote(decoder_spatial_padding_mode));
  kv.emplace_back("spatial_compression_ratio", std::to_string(spatial_compression_ratio));
  kv.emplace_back("temporal_compression_ratio", std::to_string(temporal_compression_ratio));
  kv.emplace_back("wmserve_pixel_size", JoinInts({pixel_height, pixel_width}));
  std::string out = "{\n";
  for (size_t i = 0; i < kv.size(); ++i) {
    out += "  " + JsonQuote(kv[i].first) + ": " + kv[i].second;
    out += i + 1 < kv.size() ? ",\n" : "\n";
  }
  return out + "}\n";
}

void VaeConfig::Validate() const {
  std::vector<std::string> errors;
  auto require = [&](bool ok, const std::string& message) {
    if (!ok) errors.push_back(message);
    return ok;
  };
  auto positive = [&](int v, const std::string& key) {
    return require(v > 0, key + " = " + std::to_string(v) + " must be > 0");
  };
  auto length = [&](size_t n, size_t expected, const std::string& key, const std::string& why) {
    return require(n == expected, key + " has " + std::to_string(n) + " entries, expected " +
                                      std::to_string(expected) + " (" + why + ")");
  };

  positive(in_channels, "in_channels");
  positive(out_channels, "out_channels");
  const bool latent_ok = positive(latent_channels, "latent_channels");
  const bool patch_ok = positive(patch_size, "patch_size");
  require(patch_size_t == 1, "patch_size_t = " + std::to_string(patch_size_t) +
                                 " is not implemented (the port needs 1, as LTX-2.0)");
  require(!timestep_conditioning,
          "timestep_conditioning = true is not implemented (LTX-2.0 and SANA-WM run without it)");
  require(std::isfinite(scaling_factor) && scaling_factor > 0,
          "scaling_factor = " + Num(scaling_factor) + " must be finite and > 0");
  for (const auto* mode : {&encoder_spatial_padding_mode, &decoder_spatial_padding_mode}) {
    const char* key = mode == &encoder_spatial_padding_mode ? "encoder_spatial_padding_mode"
                                                            : "decoder_spatial_padding_mode";
    require(
        *mode == "zeros" || *mode == "reflect",
        std::string(key) + " '" + *mode + "' is not implemented (supported: 'zeros', 'reflect')");
  }

  // --- encoder ---
  const size_t nd = block_out_channels.size();
  bool encoder_ok = require(nd >= 1, "block_out_channels is empty");
  encoder_ok &= length(layers_per_block.size(), nd + 1, "layers_per_block",
                       "one per down block plus the mid block");
  encoder_ok &= length(downsample_type.size(), nd, "downsample_type", "one per down block");
  encoder_ok &=
      length(spatio_temporal_scaling.size(), nd, "spatio_temporal_scaling", "one per down block");
  encoder_ok &= length(down_block_types.size(), nd, "down_block_types", "one per down block");
  if (encoder_ok) {
    for (size_t i = 0; i <= nd; ++i) {
      require(layers_per_block[i] >= 0, "layers_per_block[" + std::to_string(i) + "] = " +
                                            std::to_string(layers_per_block[i]) + " is negative");
    }
    int channels = latent_channels;  // conv_in maps to latent_channels (README §2.2)
    for (size_t i = 0; i < nd; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      require(down_block_types[i] == "LTX2VideoDownBlock3D",
              "down_block_types" + at + " '" + down_block_types[i] +
                  "' is not implemented (supported: 'LTX2VideoDownBlock3D')");
      require(spatio_temporal_scaling[i], "spatio_temporal_scaling" + at +
                                              " = false is not implemented (every LTX-2.0 "
                                              "down block has a downsampler)");
      const std::string& type = downsample_type[i];
      if (!require(type == "spatial" || type == "temporal" || type == "spatiotemporal",
                   "downsample_type" + at + " '" + type +
                       "' is not implemented (supported: "
                       "'spatial', 'temporal', 'spatiotemporal')")) {
        channels = block_out_channels[i];
        continue;
      }
      const auto stride = DownsampleStride(static_cast<int>(i));
      const int prod = stride[0] * stride[1] * stride[2];
      const int out = block_out_channels[i];
      if (positive(out, "block_out_channels" + at) && latent_ok) {
        // ltx2-spec §1.3 P5: the conv makes out/prod channels; the residual averages groups of
        // in*prod/out space-to-depth channels.
        require(out % prod == 0, "block_out_channels" + at + " = " + std::to_string(out) +
                                     " is not divisible by the " + type + " stride product " +
                                     std::to_string(prod));
        require(static_cast<int64_t>(channels) * prod % out == 0,
                "down block " + std::to_string(i) + ": " + std::to_string(channels) + " x " +
                    std::to_string(prod) + " space-to-depth channels do not split into " +
                    std::to_string(out) + " equal groups");
      }
      channels = out;
    }
    if (patch_ok) {
      require(spatial_ratio() == spatial_compression_ratio,
              "spatial_compression_ratio = " + std::to_string(spatial_compression_ratio) +
                  " but the encoder layers compress by " + std::to_string(spatial_ratio()));
      require(temporal_ratio() == temporal_compression_ratio,
              "temporal_compression_ratio = " + std::to_string(temporal_compression_ratio) +
                  " but the encoder layers compress by " + std::to_string(temporal_ratio()));
    }
  }

  // --- decoder ---
  const size_t nu = decoder_block_out_channels.size();
  bool decoder_ok = require(nu >= 1, "decoder_block_out_channels is empty");
  decoder_ok &= length(decoder_layers_per_block.size(), nu + 1, "decoder_layers_per_block",
                       "the mid block plus one per up block");
  decoder_ok &= length(decoder_spatio_temporal_scaling.size(), nu,
                       "decoder_spatio_temporal_scaling", "one per up block");
  decoder_ok &= length(decoder_inject_noise.size(), nu + 1, "decoder_inject_noise",
                       "the mid block plus one per up block");
  decoder_ok &= length(upsample_type.size(), nu, "upsample_type", "one per up block");
  decoder_ok &= length(upsample_residual.size(), nu, "upsample_residual", "one per up block");
  decoder_ok &= length(upsample_factor.size(), nu, "upsample_factor", "one per up block");
  if (decoder_ok) {
    for (size_t i = 0; i <= nu; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      require(decoder_layers_per_block[i] >= 0, "decoder_layers_per_block" + at + " = " +
                                                    std::to_string(decoder_layers_per_block[i]) +
                                                    " is negative");
      require(!decoder_inject_noise[i],
              "decoder_inject_noise" + at + " = true is not implemented (LTX-2.0 has none)");
    }
    for (size_t i = 0; i < nu; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      require(decoder_spatio_temporal_scaling[i],
              "decoder_spatio_temporal_scaling" + at + " = false is not implemented");
      require(upsample_type[i] == "spatiotemporal",
              "upsample_type" + at + " '" + upsample_type[i] +
                  "' is not implemented (supported: 'spatiotemporal')");
      require(upsample_residual[i],
              "upsample_residual" + at + " = false is not implemented (LTX-2.0 is residual)");
      const int f = upsample_factor[i];
      require(f == 1 || f == 2 || f == 4 || f == 8,
              "upsample_factor" + at + " = " + std::to_string(f) +
                  " is not implemented (supported: 1, 2, 4, 8: the residual tiles 8/f times)");
    }
    // Channel flow in module order (ltx2-spec §1.6): conv_in makes C0 = reversed[0]; up block i
    // receives C, its upsampler maps C -> C/f, and block i+1 must expect exactly that (a
    // channel-changing up block would need the unported shortcut resnet).
    bool flow_ok = true;
    int64_t channels = DecoderBlockOutChannels(0);
    flow_ok &= positive(static_cast<int>(channels), "decoder_block_out_channels");
    for (int i = 0; flow_ok && i < static_cast<int>(nu); ++i) {
      const int f = DecoderUpsampleFactor(i);
      if (f != 1 && f != 2 && f != 4 && f != 8) break;
      const std::string block = "up_blocks." + std::to_string(i);
      flow_ok &= require(channels == DecoderBlockOutChannels(i),
                         block + " receives " + std::to_string(channels) +
                             " channels but decoder_block_out_channels (reversed) gives it " +
                             std::to_string(DecoderBlockOutChannels(i)) +
                             " (a channel-changing up block is not implemented)");
      flow_ok &= require(channels % 8 == 0, block + ": " + std::to_string(channels) +
                                                " channels are not divisible by 8 "
                                                "(depth-to-space by (2,2,2))");
      channels /= f;
    }
    if (patch_ok) {
      const int64_t up = int64_t{1} << nu;
      require(patch_size * up == spatial_compression_ratio,
              "the decoder expands space by " + std::to_string(patch_size * up) +
                  " but spatial_compression_ratio = " + std::to_string(spatial_compression_ratio));
      require(
          up == temporal_compression_ratio,
          "the decoder expands time by " + std::to_string(up) +
              " but temporal_compression_ratio = " + std::to_string(temporal_compression_ratio));
    }
  }

  if (positive(pixel_height, "wmserve_pixel_size[0]") &&
      positive(pixel_width, "wmserve_pixel_size[1]") && encoder_ok && patch_ok &&
      spatial_ratio() > 0) {
    require(pixel_height % spatial_ratio() == 0 && pixel_width % spatial_ratio() == 0,
            "wmserve_pixel_size [" + std::to_string(pixel_height) + ", " +
                std::to_string(pixel_width) + "] is not a multiple of the spatial ratio " +
                std::to_string(spatial_ratio()));
  }

  if (errors.empty()) return;
  std::string message = "VAE config '" + name + "': " + std::to_string(errors.size()) + " error" +
                        (errors.size() > 1 ? "s: " : ": ");
  for (size_t i = 0; i < errors.size(); ++i) message += (i > 0 ? "; " : "") + errors[i];
  throw ConfigError(message);
}

std::array<int, 3> VaeConfig::DownsampleStride(int block) const {
  const std::string& type = downsample_type.at(static_cast<size_t>(block));
  if (type == "spatial") return {1, 2, 2};
  if (type == "temporal") return {2, 1, 1};
  if (type == "spatiotemporal") return {2, 2, 2};
  throw ConfigError("config: downsample_type '" + type + "' is not implemented");
}

int VaeConfig::DecoderBlockOutChannels(int up_block) const {
  return Reversed(decoder_block_out_channels, up_block);
}
int VaeConfig::DecoderMidLayers() const { return Reversed(decoder_layers_per_block, 0); }
int VaeConfig::DecoderUpBlockLayers(int up_block) const {
  return Reversed(decoder_layers_per_block, up_block + 1);
}
int VaeConfig::DecoderUpsampleFactor(int up_block) const {
  return Reversed(upsample_factor, up_block);
}
bool VaeConfig::DecoderUpsampleResidual(int up_block) const {
  return Reversed(upsample_residual, up_block);
}

int VaeConfig::spatial_ratio() const {
  int ratio = patch_size;
  for (int i = 0; i < num_down_blocks() && i < static_cast<int>(downsample_type.size()); ++i) {
    const std::string& type = downsample_type[static_cast<size_t>(i)];
    if (type == "spatial" || type == "spatiotemporal") ratio *= 2;
  }
  return ratio;
}

int VaeConfig::temporal_ratio() const {
  int ratio = patch_size_t;
  for (int i = 0; i < num_down_blocks() && i < static_cast<int>(downsample_type.size()); ++i) {
    const std::string& type = downsample_type[static_cast<size_t>(i)];
    if (type == "temporal" || type == "spatiotemporal") ratio *= 2;
  }
  return ratio;
}

int64_t VaeConfig::LatentFrames(int64_t pixel_frames) const {
  const int64_t r = temporal_ratio();
  if (pixel_frames < 1 || (pixel_frames - 1) % r != 0) {
    throw InvalidInputError("pixel frame count " + std::to_string(pixel_frames) + " is not 1 + " +
                            std::to_string(r) + "k");
  }
  return (pixel_frames - 1) / r + 1;
}

int64_t VaeConfig::PixelFrames(int64_t latent_frames) const {
  return latent_frames < 1 ? 0 : (latent_frames - 1) * temporal_ratio() + 1;
}

int64_t VaeConfig::LatentSize(int64_t pixels) const {
  const int64_t r = spatial_ratio();
  if (pixels < r || pixels % r != 0) {
    throw InvalidInputError("pixel size " + std::to_string(pixels) +
                            " is not a positive multiple of " + std::to_string(r));
  }
  return pixels / r;
}

}  // namespace wmserve::worker::ltx2
