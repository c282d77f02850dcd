#include "worker/models/sana/config_json.h"
#include "worker/models/sana/sana_config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <utility>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/json.h"

namespace wmserve::worker::sana {
namespace {

// Byte-identical copies of presets/tiny.json and presets/sana-wm-2.6b.json (a test checks).
constexpr std::string_view kTinyPresetJson = R"json({
  "_class_name": "SanaWMTransformer3DModel",
  "wmserve_preset": "tiny",
  "in_channels": 8,
  "num_layers": 8,
  "hidden_size": 64,
  "num_attention_heads": 4,
  "patch_size": [1, 1, 1],
  "attn_type": "BidirectionalGDNTriton",
  "camctrl_type": "BidirectionalGDNUCPESinglePathLiteLABothTriton",
  "softmax_every_n": 4,
  "linear_head_dim": 16,
  "ffn_type": "GLUMBConvTemp",
  "t_kernel_size": 3,
  "conv_kernel_size": 4,
  "k_conv_only": true,
  "pos_embed_type": "wan_rope",
  "qk_norm": true,
  "cross_norm": true,
  "y_norm": true,
  "y_norm_scale_factor": 0.01,
  "cam_attn_compress": 1,
  "init_cam_from_base": true,
  "chunk_split_strategy": "first_chunk_plus_one",
  "use_chunk_plucker_post_attn": true,
  "chunk_plucker_channels": 48,
  "chunk_plucker_post_attn_blocks": 20,
  "fp32_attention": true,
  "image_size": 720,
  "caption_channels": 32,
  "model_max_length": 8,
  "mlp_ratio": 3.0,
  "mlp_acts": ["silu", "silu", null],
  "use_pe": true,
  "learn_sigma": false,
  "pred_sigma": false,
  "mixed_precision": "bf16",
  "wmserve_pixel_size": [64, 128],
  "wmserve_vae_stride": [8, 32, 32],
  "wmserve_chunk_size": 3
}
)json";

constexpr std::string_view kSanaWm26bPresetJson = R"json({
  "_class_name": "SanaWMTransformer3DModel",
  "wmserve_preset": "sana-wm-2.6b",
  "in_channels": 128,
  "num_layers": 20,
  "hidden_size": 2240,
  "num_attention_heads": 20,
  "patch_size": [1, 1, 1],
  "attn_type": "BidirectionalGDNTriton",
  "camctrl_type": "BidirectionalGDNUCPESinglePathLiteLABothTriton",
  "softmax_every_n": 4,
  "linear_head_dim": 112,
  "ffn_type": "GLUMBConvTemp",
  "t_kernel_size": 3,
  "conv_kernel_size": 4,
  "k_conv_only": true,
  "pos_embed_type": "wan_rope",
  "qk_norm": true,
  "cross_norm": true,
  "y_norm": true,
  "y_norm_scale_factor": 0.01,
  "cam_attn_compress": 1,
  "init_cam_from_base": true,
  "chunk_split_strategy": "first_chunk_plus_one",
  "use_chunk_plucker_post_attn": true,
  "chunk_plucker_channels": 48,
  "chunk_plucker_post_attn_blocks": 20,
  "fp32_attention": true,
  "image_size": 720,
  "caption_channels": 2304,
  "model_max_length": 300,
  "mlp_ratio": 3.0,
  "mlp_acts": ["silu", "silu", null],
  "use_pe": true,
  "learn_sigma": false,
  "pred_sigma": false,
  "mixed_precision": "bf16",
  "wmserve_pixel_size": [704, 1280],
  "wmserve_vae_stride": [8, 32, 32],
  "wmserve_chunk_size": 3
}
)json";

std::string Num(double v) {
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}

template <size_t N>
std::array<int, N> ToIntArray(const JsonValue& v, const std::string& key) {
  const auto& items = v.AsArray("'" + key + "'");
  if (items.size() != N) {
    throw ConfigError("config: '" + key + "' has " + std::to_string(items.size()) +
                      " entries, expected " + std::to_string(N));
  }
  std::array<int, N> out{};
  for (size_t i = 0; i < N; ++i) out[i] = ConfigInt(items[i], key + "[" + std::to_string(i) + "]");
  return out;
}

std::string JoinInts(const int* values, size_t n) {
  std::string out = "[";
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(values[i]);
  }
  return out + "]";
}

}  // namespace

std::string_view PresetJson(std::string_view name) {
  if (name == "tiny") return kTinyPresetJson;
  if (name == "sana-wm-2.6b") return kSanaWm26bPresetJson;
  throw ConfigError("config: unknown preset '" + std::string(name) +
                    "' (known: tiny, sana-wm-2.6b)");
}

std::vector<std::string> PresetNames() { return {"tiny", "sana-wm-2.6b"}; }

SanaConfig SanaConfig::FromDiffusersJson(std::string_view json, const SanaConfig& defaults,
                                         bool allow_unknown_keys) {
  const JsonValue doc = ParseConfigObject(json);
  SanaConfig c = defaults;
  c.ignored_keys.clear();
  std::vector<std::string> unknown;
  try {
    for (const auto& [key, v] : doc.AsObject()) {
      const std::string q = "'" + key + "'";
      if (!key.empty() && key[0] == '_') continue;
      if (key == "wmserve_preset") {
        c.name = v.AsString(q);
      } else if (key == "in_channels") {
        c.in_channels = ConfigInt(v, key);
      } else if (key == "num_layers") {
        c.num_layers = ConfigInt(v, key);
      } else if (key == "hidden_size") {
        c.hidden_size = ConfigInt(v, key);
      } else if (key == "num_attention_heads") {
        c.num_attention_heads = ConfigInt(v, key);
      } else if (key == "patch_size") {
        // Python's to_3tuple also accepts a single int.
        if (v.is_number()) {
          const int p = ConfigInt(v, key);
          c.patch_size = {p, p, p};
        } else {
          c.patch_size = ToIntArray<3>(v, key);
        }
      } else if (key == "attn_type") {
        c.attn_type = v.AsString(q);
      } else if (key == "camctrl_type") {
        c.camctrl_type = v.AsString(q);
      } else if (key == "softmax_every_n") {
        c.softmax_every_n = ConfigInt(v, key);
      } else if (key == "linear_head_dim") {
        c.linear_head_dim = ConfigInt(v, key);
      } else if (key == "ffn_type") {
        c.ffn_type = v.AsString(q);
      } else if (key == "mlp_ratio") {
        c.mlp_ratio = v.AsDouble(q);
      } else if (key == "mlp_acts") {
        const auto& items = v.AsArray(q);
        if (items.size() != 3) {
          throw ConfigError("config: 'mlp_acts' has " + std::to_string(items.size()) +
                            " entries, expected 3");
        }
        for (size_t i = 0; i < 3; ++i) {
          c.mlp_acts[i] =
              items[i].is_null() ? "" : items[i].AsString("'mlp_acts[" + std::to_string(i) + "]'");
        }
      } else if (key == "t_kernel_size") {
        c.t_kernel_size = ConfigInt(v, key);
      } else if (key == "conv_kernel_size") {
        c.conv_kernel_size = ConfigInt(v, key);
      } else if (key == "k_conv_only") {
        c.k_conv_only = v.AsBool(q);
      } else if (key == "pos_embed_type") {
        c.pos_embed_type = v.AsString(q);
      } else if (key == "qk_norm") {
        c.qk_norm = v.AsBool(q);
      } else if (key == "cross_norm") {
        c.cross_norm = v.AsBool(q);
      } else if (key == "y_norm") {
        c.y_norm = v.AsBool(q);
      } else if (key == "y_norm_scale_factor") {
        c.y_norm_scale_factor = v.AsDouble(q);
      } else if (key == "cam_attn_compress") {
        c.cam_attn_compress = ConfigInt(v, key);
      } else if (key == "init_cam_from_base") {
        c.init_cam_from_base = v.AsBool(q);
      } else if (key == "chunk_split_strategy") {
        c.chunk_split_strategy = v.AsString(q);
      } else if (key == "use_chunk_plucker_post_attn") {
        c.use_chunk_plucker_post_attn = v.AsBool(q);
      } else if (key == "chunk_plucker_channels") {
        c.chunk_plucker_channels = ConfigInt(v, key);
      } else if (key == "chunk_plucker_post_attn_blocks") {
        c.chunk_plucker_post_attn_blocks = ConfigInt(v, key);
      } else if (key == "fp32_attention") {
        c.fp32_attention = v.AsBool(q);
      } else if (key == "image_size") {
        c.image_size = ConfigInt(v, key);
      } else if (key == "caption_channels") {
        c.caption_channels = ConfigInt(v, key);
      } else if (key == "model_max_length") {
        c.model_max_length = ConfigInt(v, key);
      } else if (key == "use_pe") {
        c.use_pe = v.AsBool(q);
      } else if (key == "learn_sigma") {
        c.learn_sigma = v.AsBool(q);
      } else if (key == "pred_sigma") {
        c.pred_sigma = v.AsBool(q);
      } else if (key == "mixed_precision") {
        c.mixed_precision = v.AsString(q);
      } else if (key == "wmserve_pixel_size") {
        const auto hw = ToIntArray<2>(v, key);
        c.pixel_height = hw[0];
        c.pixel_width = hw[1];
      } else if (key == "wmserve_vae_stride") {
        const auto s = ToIntArray<3>(v, key);
        if (s[1] != s[2]) {
          throw ConfigError("config: 'wmserve_vae_stride' " + JoinInts(s.data(), 3) +
                            " must have equal spatial strides");
        }
        c.vae_temporal_stride = s[0];
        c.vae_spatial_stride = s[1];
      } else if (key == "wmserve_chunk_size") {
        c.chunk_size = ConfigInt(v, key);
      } else {
        unknown.push_back(key);
      }
    }
  } catch (const JsonError& e) {
    ThrowConfigJsonError(e);
  }
  c.ignored_keys =
      CheckUnknownKeys(std::move(unknown), allow_unknown_keys, "SanaWMTransformer3DModel");
  return c;
}

SanaConfig SanaConfig::Preset(std::string_view name) {
  SanaConfig c = FromDiffusersJson(PresetJson(name));
  c.Validate();
  return c;
}

SanaConfig SanaConfig::FromFile(const std::string& path) {
  SanaConfig c;
  try {
    c = FromDiffusersJson(ReadConfigFile(path));
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  c.Validate();
  return c;
}

std::string SanaConfig::ToJson() const {
  std::vector<std::pair<std::string, std::string>> kv;
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  auto s = [](const std::string& x) { return JsonQuote(x); };
  kv.emplace_back("_class_name", s("SanaWMTransformer3DModel"));
  kv.emplace_back("wmserve_preset", s(name));
  kv.emplace_back("in_channels", std::to_string(in_channels));
  kv.emplace_back("num_layers", std::to_string(num_layers));
  kv.emplace_back("hidden_size", std::to_string(hidden_size));
  kv.emplace_back("num_attention_heads", std::to_string(num_attention_heads));
  kv.emplace_back("patch_size", JoinInts(patch_size.data(), 3));
  kv.emplace_back("attn_type", s(attn_type));
  kv.emplace_back("camctrl_type", s(camctrl_type));
  kv.emplace_back("softmax_every_n", std::to_string(softmax_every_n));
  kv.emplace_back("linear_head_dim", std::to_string(linear_head_dim));
  kv.emplace_back("ffn_type", s(ffn_type));
  kv.emplace_back("t_kernel_size", std::to_string(t_kernel_size));
  kv.emplace_back("conv_kernel_size", std::to_string(conv_kernel_size));
  kv.emplace_back("k_conv_only", b(k_conv_only));
  kv.emplace_back("pos_embed_type", s(pos_embed_type));
  kv.emplace_back("qk_norm", b(qk_norm));
  kv.emplace_back("cross_norm", b(cross_norm));
  kv.emplace_back("y_norm", b(y_norm));
  kv.emplace_back("y_norm_scale_factor", JsonValue::Number(y_norm_scale_factor).Dump());
  kv.emplace_back("cam_attn_compress", std::to_string(cam_attn_compress));
  kv.emplace_back("init_cam_from_base", b(init_cam_from_base));
  kv.emplace_back("chunk_split_strategy", s(chunk_split_strategy));
  kv.emplace_back("use_chunk_plucker_post_attn", b(use_chunk_plucker_post_attn));
  kv.emplace_back("chunk_plucker_channels", std::to_string(chunk_plucker_channels));
  kv.emplace_back("chunk_plucker_post_attn_blocks", std::to_string(chunk_plucker_post_attn_blocks));
  kv.emplace_back("fp32_attention", b(fp32_attention));
  kv.emplace_back("image_size", std::to_string(image_size));
  kv.emplace_back("caption_channels", std::to_string(caption_channels));
  kv.emplace_back("model_max_length", std::to_string(model_max_length));
  kv.emplace_back("mlp_ratio", JsonValue::Number(mlp_ratio).Dump());
  std::string acts = "[";
  for (size_t i = 0; i < 3; ++i) {
    if (i > 0) acts += ", ";
    acts += mlp_acts[i].empty() ? "null" : s(mlp_acts[i]);
  }
  kv.emplace_back("mlp_acts", acts + "]");
  kv.emplace_back("use_pe", b(use_pe));
  kv.emplace_back("learn_sigma", b(learn_sigma));
  kv.emplace_back("pred_sigma", b(pred_sigma));
  kv.emplace_back("mixed_precision", s(mixed_precision));
  const int pixel[2] = {pixel_height, pixel_width};
  kv.emplace_back("wmserve_pixel_size", JoinInts(pixel, 2));
  const int stride[3] = {vae_temporal_stride, vae_spatial_stride, vae_spatial_stride};
  kv.emplace_back("wmserve_vae_stride", JoinInts(stride, 3));
  kv.emplace_back("wmserve_chunk_size", std::to_string(chunk_size));
  std::string out = "{\n";
  for (size_t i = 0; i < kv.size(); ++i) {
    out += "  " + JsonQuote(kv[i].first) + ": " + kv[i].second;
    out += i + 1 < kv.size() ? ",\n" : "\n";
  }
  return out + "}\n";
}

void SanaConfig::Validate() const {
  std::vector<std::string> errors;
  auto require = [&](bool ok, const std::string& message) {
    if (!ok) errors.push_back(message);
  };
  auto positive = [&](int v, const char* key) {
    require(v > 0, std::string(key) + " = " + std::to_string(v) + " must be > 0");
    return v > 0;
  };
  auto one_of = [&](const std::string& v, const char* key,
                    std::initializer_list<const char*> supported) {
    for (const char* s : supported) {
      if (v == s) return;
    }
    std::string list;
    for (const char* s : supported) list += (list.empty() ? "'" : ", '") + std::string(s) + "'";
    errors.push_back(std::string(key) + " '" + v + "' is not implemented (supported: " + list +
                     ")");
  };
  auto must_be = [&](bool v, bool expected, const char* key) {
    require(v == expected, std::string(key) + " = " + (v ? "true" : "false") +
                               " is not implemented (the port needs " +
                               (expected ? "true" : "false") + ")");
  };

  positive(in_channels, "in_channels");
  const bool depth_ok = positive(num_layers, "num_layers");
  const bool hidden_ok = positive(hidden_size, "hidden_size");
  const bool heads_ok = positive(num_attention_heads, "num_attention_heads");
  const bool hd_ok = positive(linear_head_dim, "linear_head_dim");
  positive(caption_channels, "caption_channels");
  positive(model_max_length, "model_max_length");

  if (hidden_ok && heads_ok) {
    require(hidden_size % num_attention_heads == 0,
            "hidden_size " + std::to_string(hidden_size) + " is not divisible by " +
                "num_attention_heads " + std::to_string(num_attention_heads));
  }
  if (hidden_ok && hd_ok) {
    require(hidden_size % linear_head_dim == 0,
            "hidden_size " + std::to_string(hidden_size) + " is not divisible by linear_head_dim " +
                std::to_string(linear_head_dim));
  }
  if (hd_ok) {
    const int d = linear_head_dim;
    // UCPE: head_dim / 2 must split into groups of 4.
    require(d % 8 == 0, "linear_head_dim " + std::to_string(d) +
                            " must be a multiple of 8 (the camera head's first half is groups of 4)");
    // Wan RoPE on the full head and on the camera half head: non-empty h/w parts, even t part.
    for (const int dim : {d, d / 2}) {
      const std::string which = dim == d ? "head dim " : "camera RoPE dim (head_dim/2) ";
      require(dim / 6 > 0, which + std::to_string(dim) +
                               " is too small for Wan RoPE (needs 2*floor(dim/6) > 0)");
      require((dim - 4 * (dim / 6)) % 2 == 0 && dim % 2 == 0,
              which + std::to_string(dim) + " gives an odd Wan RoPE t part");
    }
    require(!(d > 128 && d < 256),
            "linear_head_dim " + std::to_string(d) +
                " in (128, 256): the camera softmax head padding of the reference is unverified");
  }
  if (depth_ok) {
    require(softmax_every_n >= 1 && softmax_every_n <= num_layers,
            "softmax_every_n " + std::to_string(softmax_every_n) + " must be in [1, num_layers=" +
                std::to_string(num_layers) + "] so that at least one softmax block exists");
  }
  require(patch_size == std::array<int, 3>{1, 1, 1},
          "patch_size " + JoinInts(patch_size.data(), 3) +
              " is not implemented (the port needs [1, 1, 1])");
  require(cam_attn_compress == 1, "cam_attn_compress " + std::to_string(cam_attn_compress) +
                                      " is not implemented (the port needs 1)");
  require(t_kernel_size > 0 && t_kernel_size % 2 == 1,
          "t_kernel_size " + std::to_string(t_kernel_size) + " must be odd and > 0");
  require(conv_kernel_size >= 1, "conv_kernel_size " + std::to_string(conv_kernel_size) +
                                     " must be >= 1");
  require(mlp_ratio > 0 && std::isfinite(mlp_ratio) && ffn_hidden_features() > 0,
          "mlp_ratio " + Num(mlp_ratio) + " must give a positive FFN width");
  one_of(attn_type, "attn_type", {"BidirectionalGDNTriton"});
  one_of(camctrl_type, "camctrl_type", {"BidirectionalGDNUCPESinglePathLiteLABothTriton"});
  one_of(ffn_type, "ffn_type", {"GLUMBConvTemp"});
  one_of(pos_embed_type, "pos_embed_type", {"wan_rope", "casual_wan_rope"});
  one_of(chunk_split_strategy, "chunk_split_strategy", {"first_chunk_plus_one"});
  one_of(mixed_precision, "mixed_precision", {"bf16", "fp16", "fp32"});
  require(mlp_acts[0] == "silu" && mlp_acts[1] == "silu" && mlp_acts[2].empty(),
          "mlp_acts [" + mlp_acts[0] + ", " + mlp_acts[1] + ", " +
              (mlp_acts[2].empty() ? "null" : mlp_acts[2]) +
              "] is not implemented (the port needs [silu, silu, null])");
  must_be(k_conv_only, true, "k_conv_only");
  must_be(qk_norm, true, "qk_norm");
  must_be(cross_norm, true, "cross_norm");
  must_be(y_norm, true, "y_norm");
  must_be(use_pe, true, "use_pe");
  must_be(use_chunk_plucker_post_attn, true, "use_chunk_plucker_post_attn");
  must_be(learn_sigma, false, "learn_sigma");
  must_be(pred_sigma, false, "pred_sigma");

  const bool tstride_ok = positive(vae_temporal_stride, "wmserve_vae_stride[0]");
  const bool sstride_ok = positive(vae_spatial_stride, "wmserve_vae_stride[1]");
  const bool ph_ok = positive(pixel_height, "wmserve_pixel_size[0]");
  const bool pw_ok = positive(pixel_width, "wmserve_pixel_size[1]");
  if (sstride_ok && ph_ok && pw_ok) {
    require(latent_height() > 0 && latent_width() > 0,
            "wmserve_pixel_size [" + std::to_string(pixel_height) + ", " +
                std::to_string(pixel_width) + "] is smaller than the VAE stride " +
                std::to_string(vae_spatial_stride));
  }
  if (tstride_ok) {
    require(chunk_plucker_channels == 6 * vae_temporal_stride,
            "chunk_plucker_channels " + std::to_string(chunk_plucker_channels) +
                " must be 6 x the VAE temporal stride (" +
                std::to_string(6 * vae_temporal_stride) + ")");
  }
  positive(chunk_size, "wmserve_chunk_size");

  if (errors.empty()) return;
  std::string message = "config '" + name + "': " + std::to_string(errors.size()) + " error" +
                        (errors.size() > 1 ? "s: " : ": ");
  for (size_t i = 0; i < errors.size(); ++i) message += (i > 0 ? "; " : "") + errors[i];
  throw ConfigError(message);
}

int SanaConfig::ffn_hidden_features() const {
  // Python int() truncates toward zero.
  const double width = static_cast<double>(hidden_size) * mlp_ratio;
  if (!(width >= 0) || width > INT32_MAX) return 0;
  return static_cast<int>(width);
}

std::vector<int> SanaConfig::SoftmaxBlocks() const {
  std::vector<int> out;
  for (int i = 0; i < num_layers; ++i) {
    if (IsSoftmaxBlock(i)) out.push_back(i);
  }
  return out;
}

bool SanaConfig::IsSoftmaxBlock(int block) const {
  return softmax_every_n > 0 && (block + 1) % softmax_every_n == 0;
}

bool SanaConfig::HasPluckerProj(int block) const {
  return use_chunk_plucker_post_attn &&
         (chunk_plucker_post_attn_blocks < 0 || block < chunk_plucker_post_attn_blocks);
}

RopeSplit SanaConfig::WanRopeSplit(int dim) {
  RopeSplit s;
  s.h = dim / 6;
  s.w = dim / 6;
  s.t = dim / 2 - 2 * (dim / 6);
  return s;
}

std::vector<int> SanaConfig::CameraRopePairIndices() const {
  const RopeSplit main = rope_split();
  const RopeSplit cam = camera_rope_split();
  std::vector<int> out;
  for (int i = 0; i < cam.t; ++i) out.push_back(i);
  for (int i = 0; i < cam.h; ++i) out.push_back(main.t + i);
  for (int i = 0; i < cam.w; ++i) out.push_back(main.t + main.h + i);
  return out;
}

int SanaConfig::LatentFrames(int pixel_frames) const {
  if (pixel_frames < 1) return 0;
  return (pixel_frames - 1) / vae_temporal_stride + 1;
}

double SanaConfig::GdnKeyScale(int tokens) const {
  return 1.0 / std::sqrt(static_cast<double>(head_dim()) * static_cast<double>(tokens));
}

double SanaConfig::softmax_scale() const {
  return 1.0 / std::sqrt(static_cast<double>(head_dim()));
}

double SanaConfig::camera_softmax_scale_bidirectional() const {
  const int d = head_dim();
  const bool native = d == 32 || d == 64 || d == 128 || d == 256;
  const int padded = (native || d > 128) ? d : 128;
  return 1.0 / std::sqrt(static_cast<double>(padded));
}

}  // namespace wmserve::worker::sana
