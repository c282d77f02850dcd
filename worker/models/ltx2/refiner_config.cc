// TransformerConfig / RefinerOptions (see refiner_config.h).
#include "worker/models/sana/config_json.h"
#include "worker/models/ltx2/refiner_config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <utility>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/json.h"

namespace wmserve::worker::ltx2 {
namespace {

using sana::CheckUnknownKeys;
using sana::ConfigInt;
using sana::ParseConfigObject;
using sana::ReadConfigFile;
using sana::ThrowConfigJsonError;
using sana::ConfigError;
using sana::JsonError;
using sana::JsonQuote;
using sana::JsonValue;
using sana::ParseJson;

// The golden ltx2-refiner-tiny `config` metadata, verbatim (golden README §2.1): the audio values
// are the generator's tiny ones and are ignored by the video-only path.
constexpr std::string_view kTinyPresetJson = R"json({
  "wmserve_preset": "tiny",
  "in_channels": 8, "out_channels": 8, "patch_size": 1, "patch_size_t": 1,
  "num_attention_heads": 4, "attention_head_dim": 16, "cross_attention_dim": 64,
  "vae_scale_factors": [8, 32, 32], "pos_embed_max_pos": 20, "base_height": 2048,
  "base_width": 2048, "gated_attn": false, "cross_attn_mod": false,
  "audio_in_channels": 8, "audio_out_channels": 8, "audio_patch_size": 1,
  "audio_patch_size_t": 1, "audio_num_attention_heads": 2, "audio_attention_head_dim": 8,
  "audio_cross_attention_dim": 16, "audio_scale_factor": 4, "audio_pos_embed_max_pos": 20,
  "audio_sampling_rate": 16000, "audio_hop_length": 160, "audio_gated_attn": false,
  "audio_cross_attn_mod": false, "num_layers": 2, "activation_fn": "gelu-approximate",
  "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": false, "norm_eps": 1e-06,
  "caption_channels": 32, "attention_bias": true, "attention_out_bias": true,
  "rope_theta": 10000.0, "rope_double_precision": true, "causal_offset": 1,
  "timestep_scale_multiplier": 1000, "cross_attn_timestep_scale_multiplier": 1000,
  "rope_type": "split", "use_prompt_embeddings": true, "perturbed_attn": false
}
)json";

// LTX-2.0 (spec §2.1; diffusers scripts/convert_ltx2_to_diffusers.py "2.0"). Only the video keys:
// the audio stream is not part of this port.
constexpr std::string_view kLtx2PresetJson = R"json({
  "_class_name": "LTX2VideoTransformer3DModel",
  "wmserve_preset": "ltx2",
  "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
  "num_attention_heads": 32, "attention_head_dim": 128, "cross_attention_dim": 4096,
  "vae_scale_factors": [8, 32, 32], "pos_embed_max_pos": 20, "base_height": 2048,
  "base_width": 2048, "gated_attn": false, "cross_attn_mod": false,
  "num_layers": 48, "activation_fn": "gelu-approximate",
  "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": false, "norm_eps": 1e-06,
  "caption_channels": 3840, "attention_bias": true, "attention_out_bias": true,
  "rope_theta": 10000.0, "rope_double_precision": true, "causal_offset": 1,
  "timestep_scale_multiplier": 1000, "rope_type": "split", "use_prompt_embeddings": true,
  "perturbed_attn": false
}
)json";

std::string Num(double v) { return JsonValue::Number(v).Dump(); }

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::string_view TransformerPresetJson(std::string_view name) {
  if (name == "tiny") return kTinyPresetJson;
  if (name == "ltx2") return kLtx2PresetJson;
  throw ConfigError("config: unknown LTX-2 transformer preset '" + std::string(name) +
                    "' (known: tiny, ltx2)");
}

std::vector<std::string> TransformerPresetNames() { return {"tiny", "ltx2"}; }

TransformerConfig TransformerConfig::FromJson(std::string_view json,
                                              const TransformerConfig& defaults,
                                              bool allow_unknown_keys) {
  const JsonValue doc = ParseConfigObject(json);
  TransformerConfig c = defaults;
  c.ignored_keys.clear();
  c.name = "custom";  // unless the document names its preset
  std::vector<std::string> unknown;
  try {
    for (const auto& [key, v] : doc.AsObject()) {
      const std::string q = "'" + key + "'";
      if (!key.empty() && key[0] == '_') continue;
      if (key == "wmserve_preset") {
        c.name = v.AsString(q);
      } else if (key == "in_channels") {
        c.in_channels = ConfigInt(v, key);
      } else if (key == "out_channels") {
        // diffusers: out_channels = out_channels or in_channels.
        c.out_channels = v.is_null() ? -1 : ConfigInt(v, key);
      } else if (key == "patch_size") {
        c.patch_size = ConfigInt(v, key);
      } else if (key == "patch_size_t") {
        c.patch_size_t = ConfigInt(v, key);
      } else if (key == "num_attention_heads") {
        c.num_attention_heads = ConfigInt(v, key);
      } else if (key == "attention_head_dim") {
        c.attention_head_dim = ConfigInt(v, key);
      } else if (key == "cross_attention_dim") {
        c.cross_attention_dim = ConfigInt(v, key);
      } else if (key == "num_layers") {
        c.num_layers = ConfigInt(v, key);
      } else if (key == "caption_channels") {
        c.caption_channels = ConfigInt(v, key);
      } else if (key == "activation_fn") {
        c.activation_fn = v.AsString(q);
      } else if (key == "qk_norm") {
        c.qk_norm = v.AsString(q);
      } else if (key == "norm_elementwise_affine") {
        c.norm_elementwise_affine = v.AsBool(q);
      } else if (key == "norm_eps") {
        c.norm_eps = v.AsDouble(q);
      } else if (key == "attention_bias") {
        c.attention_bias = v.AsBool(q);
      } else if (key == "attention_out_bias") {
        c.attention_out_bias = v.AsBool(q);
      } else if (key == "rope_theta") {
        c.rope_theta = v.AsDouble(q);
      } else if (key == "rope_double_precision") {
        c.rope_double_precision = v.AsBool(q);
      } else if (key == "rope_type") {
        c.rope_type = v.AsString(q);
      } else if (key == "pos_embed_max_pos") {
        c.pos_embed_max_pos = ConfigInt(v, key);
      } else if (key == "base_height") {
        c.base_height = ConfigInt(v, key);
      } else if (key == "base_width") {
        c.base_width = ConfigInt(v, key);
      } else if (key == "vae_scale_factors") {
        const auto& items = v.AsArray(q);
        if (items.size() != 3) {
          throw ConfigError("config: 'vae_scale_factors' has " + std::to_string(items.size()) +
                            " entries, expected 3");
        }
        for (size_t i = 0; i < 3; ++i) {
          c.vae_scale_factors[i] = ConfigInt(items[i], "vae_scale_factors[" + std::to_string(i) + "]");
        }
      } else if (key == "causal_offset") {
        c.causal_offset = ConfigInt(v, key);
      } else if (key == "timestep_scale_multiplier") {
        c.timestep_scale_multiplier = v.AsDouble(q);
      } else if (key == "gated_attn") {
        c.gated_attn = v.AsBool(q);
      } else if (key == "cross_attn_mod") {
        c.cross_attn_mod = v.AsBool(q);
      } else if (key == "use_prompt_embeddings") {
        c.use_prompt_embeddings = v.AsBool(q);
      } else if (key == "perturbed_attn") {
        c.perturbed_attn = v.AsBool(q);
      } else if (StartsWith(key, "audio_") || key == "cross_attn_timestep_scale_multiplier") {
        // The audio stream and the LTX-2.3 cross-attention modulation: not on the video path.
        c.ignored_keys.push_back(key);
      } else {
        unknown.push_back(key);
      }
    }
  } catch (const JsonError& e) {
    ThrowConfigJsonError(e);
  }
  if (c.out_channels < 0) c.out_channels = c.in_channels;
  for (std::string& key : CheckUnknownKeys(std::move(unknown), allow_unknown_keys,
                                            "LTX2VideoTransformer3DModel")) {
    c.ignored_keys.push_back(std::move(key));
  }
  return c;
}

TransformerConfig TransformerConfig::Preset(std::string_view name) {
  TransformerConfig c = FromJson(TransformerPresetJson(name));
  c.Validate();
  return c;
}

TransformerConfig TransformerConfig::FromFile(const std::string& path) {
  TransformerConfig c;
  try {
    c = FromJson(ReadConfigFile(path));
    c.Validate();
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  return c;
}

std::string TransformerConfig::ToJson() const {
  std::vector<std::pair<std::string, std::string>> kv;
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  auto i = [](int x) { return std::to_string(x); };
  kv.emplace_back("_class_name", JsonQuote("LTX2VideoTransformer3DModel"));
  kv.emplace_back("wmserve_preset", JsonQuote(name));
  kv.emplace_back("in_channels", i(in_channels));
  kv.emplace_back("out_channels", i(out_channels));
  kv.emplace_back("patch_size", i(patch_size));
  kv.emplace_back("patch_size_t", i(patch_size_t));
  kv.emplace_back("num_attention_heads", i(num_attention_heads));
  kv.emplace_back("attention_head_dim", i(attention_head_dim));
  kv.emplace_back("cross_attention_dim", i(cross_attention_dim));
  kv.emplace_back("num_layers", i(num_layers));
  kv.emplace_back("caption_channels", i(caption_channels));
  kv.emplace_back("activation_fn", JsonQuote(activation_fn));
  kv.emplace_back("qk_norm", JsonQuote(qk_norm));
  kv.emplace_back("norm_elementwise_affine", b(norm_elementwise_affine));
  kv.emplace_back("norm_eps", Num(norm_eps));
  kv.emplace_back("attention_bias", b(attention_bias));
  kv.emplace_back("attention_out_bias", b(attention_out_bias));
  kv.emplace_back("rope_theta", Num(rope_theta));
  kv.emplace_back("rope_double_precision", b(rope_double_precision));
  kv.emplace_back("rope_type", JsonQuote(rope_type));
  kv.emplace_back("pos_embed_max_pos", i(pos_embed_max_pos));
  kv.emplace_back("base_height", i(base_height));
  kv.emplace_back("base_width", i(base_width));
  kv.emplace_back("vae_scale_factors", "[" + i(vae_scale_factors[0]) + ", " +
                                           i(vae_scale_factors[1]) + ", " +
                                           i(vae_scale_factors[2]) + "]");
  kv.emplace_back("causal_offset", i(causal_offset));
  kv.emplace_back("timestep_scale_multiplier", Num(timestep_scale_multiplier));
  kv.emplace_back("gated_attn", b(gated_attn));
  kv.emplace_back("cross_attn_mod", b(cross_attn_mod));
  kv.emplace_back("use_prompt_embeddings", b(use_prompt_embeddings));
  kv.emplace_back("perturbed_attn", b(perturbed_attn));
  std::string out = "{\n";
  for (size_t k = 0; k < kv.size(); ++k) {
    out += "  " + JsonQuote(kv[k].first) + ": " + kv[k].second + (k + 1 < kv.size() ? ",\n" : "\n");
  }
  return out + "}\n";
}

void TransformerConfig::Validate() const {
  std::vector<std::string> errors;
  auto require = [&](bool ok, const std::string& message) {
    if (!ok) errors.push_back(message);
  };
  auto positive = [&](int v, const char* key) {
    require(v > 0, std::string(key) + " = " + std::to_string(v) + " must be > 0");
    return v > 0;
  };
  auto exactly = [&](const std::string& v, const char* key, const char* supported) {
    require(v == supported, std::string(key) + " '" + v + "' is not implemented (supported: '" +
                                supported + "')");
  };
  auto flag = [&](bool v, bool supported, const char* key) {
    require(v == supported, std::string(key) + " = " + (v ? "true" : "false") +
                                " is not implemented (the LTX-2.0 video path has " +
                                (supported ? "true" : "false") + ")");
  };

  positive(in_channels, "in_channels");
  require(out_channels == in_channels,
          "out_channels = " + std::to_string(out_channels) + " must equal in_channels = " +
              std::to_string(in_channels) + " (the output is a latent-space velocity)");
  require(patch_size == 1 && patch_size_t == 1,
          "patch_size = " + std::to_string(patch_size) + ", patch_size_t = " +
              std::to_string(patch_size_t) + ": only 1 x 1 x 1 patches are implemented");
  const bool heads_ok = positive(num_attention_heads, "num_attention_heads");
  const bool dim_ok = positive(attention_head_dim, "attention_head_dim");
  if (dim_ok) {
    require(attention_head_dim % 2 == 0, "attention_head_dim = " +
                                             std::to_string(attention_head_dim) +
                                             " must be even (split RoPE halves each head)");
  }
  if (heads_ok && dim_ok) {
    require(cross_attention_dim == inner_dim(),
            "cross_attention_dim = " + std::to_string(cross_attention_dim) +
                " must equal num_attention_heads x attention_head_dim = " +
                std::to_string(inner_dim()) + " (caption_projection maps the text to D)");
    require(rope_freqs_per_axis() >= 1,
            "inner dim " + std::to_string(inner_dim()) + " < 6 leaves no RoPE frequency");
  }
  positive(num_layers, "num_layers");
  positive(caption_channels, "caption_channels");
  exactly(activation_fn, "activation_fn", "gelu-approximate");
  exactly(qk_norm, "qk_norm", "rms_norm_across_heads");
  exactly(rope_type, "rope_type", "split");
  flag(norm_elementwise_affine, false, "norm_elementwise_affine");
  flag(attention_bias, true, "attention_bias");
  flag(attention_out_bias, true, "attention_out_bias");
  flag(rope_double_precision, true, "rope_double_precision");
  flag(gated_attn, false, "gated_attn");
  flag(cross_attn_mod, false, "cross_attn_mod");
  flag(use_prompt_embeddings, true, "use_prompt_embeddings");
  flag(perturbed_attn, false, "perturbed_attn");
  require(std::isfinite(norm_eps) && norm_eps > 0, "norm_eps = " + Num(norm_eps) + " must be > 0");
  require(std::isfinite(rope_theta) && rope_theta > 1,
          "rope_theta = " + Num(rope_theta) + " must be > 1");
  positive(pos_embed_max_pos, "pos_embed_max_pos");
  positive(base_height, "base_height");
  positive(base_width, "base_width");
  for (int k = 0; k < 3; ++k) {
    require(vae_scale_factors[k] > 0, "vae_scale_factors[" + std::to_string(k) + "] = " +
                                          std::to_string(vae_scale_factors[k]) + " must be > 0");
  }
  require(causal_offset >= 0, "causal_offset = " + std::to_string(causal_offset) +
                                  " must be >= 0");
  require(std::isfinite(timestep_scale_multiplier) && timestep_scale_multiplier > 0,
          "timestep_scale_multiplier = " + Num(timestep_scale_multiplier) + " must be > 0");

  if (!errors.empty()) {
    std::string message = "config '" + name + "': ";
    for (size_t k = 0; k < errors.size(); ++k) message += (k ? "; " : "") + errors[k];
    throw ConfigError(message);
  }
}

void RefinerOptions::Validate() const {
  std::vector<std::string> errors;
  auto require = [&](bool ok, const std::string& message) {
    if (!ok) errors.push_back(message);
  };
  require(sigmas.size() >= 2, "sigmas has " + std::to_string(sigmas.size()) +
                                  " entries, expected at least 2 (one Euler step)");
  for (size_t k = 0; k < sigmas.size(); ++k) {
    const float s = sigmas[k];
    const std::string at = "sigmas[" + std::to_string(k) + "] = " + Num(s);
    if (!std::isfinite(s)) {
      errors.push_back(at + " is not finite");
      continue;
    }
    if (k + 1 == sigmas.size()) {
      require(s == 0.0f, at + ": the schedule must end at 0");
    } else {
      require(s > 0.0f && s <= 1.0f, at + " must be in (0, 1]");
      if (std::isfinite(sigmas[k + 1])) {
        require(sigmas[k + 1] < s, at + " must be > sigmas[" + std::to_string(k + 1) + "]");
      }
    }
  }
  require(block_size >= 1, "block_size = " + std::to_string(block_size) + " must be >= 1");
  require(sink_size >= 1, "sink_size = " + std::to_string(sink_size) + " must be >= 1");
  require(kv_max_frames >= sink_size, "kv_max_frames = " + std::to_string(kv_max_frames) +
                                          " must be >= sink_size = " + std::to_string(sink_size));
  require(std::isfinite(fps) && fps > 0, "fps = " + Num(fps) + " must be > 0");
  if (!errors.empty()) {
    std::string message = "refiner options: ";
    for (size_t k = 0; k < errors.size(); ++k) message += (k ? "; " : "") + errors[k];
    throw ConfigError(message);
  }
}

}  // namespace wmserve::worker::ltx2
