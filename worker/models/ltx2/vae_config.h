// File: hyper-parameters of the LTX-2.0 video VAE (ltx2-spec §1.1) and its latent geometry.
//
// Depends on the C++ standard library only.
//
// A VaeConfig is read from the diffusers-style JSON that `AutoencoderKLLTX2Video` stores
// (`vae/config.json` of a diffusers checkpoint, and the `config` entry of the golden files'
// safetensors metadata). Two presets ship as worker/models/ltx2/presets/vae_{tiny,ltx2}.json and
// are also compiled in (VaePresetJson), so the binary needs no files:
//   * "tiny": the golden test configuration (../shared/golden/ltx2-vae-tiny/README.md §2.1; NOT
//     the ltx2-spec §4.1 tiny, which has other channel counts);
//   * "ltx2" (alias "full"): the LTX-2.0 checkpoint at true scale (ltx2-spec §1.1).
//
// Keys:
//   * required (their diffusers defaults are not safe to assume; e.g. the class default
//     decoder_causal=true differs from the LTX-2.0 config, ltx2-spec §1.1 "Default pitfall"):
//     latent_channels, block_out_channels, layers_per_block, downsample_type,
//     decoder_block_out_channels, decoder_layers_per_block, patch_size, encoder_causal,
//     decoder_causal, encoder_spatial_padding_mode, decoder_spatial_padding_mode;
//   * optional, defaulting to the LTX-2.0 values: in_channels, out_channels, down_block_types,
//     spatio_temporal_scaling, decoder_spatio_temporal_scaling, decoder_inject_noise,
//     upsample_type, upsample_residual, upsample_factor, timestep_conditioning, patch_size_t,
//     resnet_norm_eps, scaling_factor, spatial_compression_ratio, temporal_compression_ratio,
//     and SANA's `decoder_upsample_type` (AutoencoderKLCausalLTX2Video; only null is accepted,
//     which means stride (2,2,2) everywhere);
//   * wmserve extensions: "wmserve_preset" (a name), "wmserve_pixel_size" [H, W] (the pixel
//     resolution the serving path resizes images to, 704x1280);
//   * keys starting with '_' (_class_name, _diffusers_version, _name_or_path) are ignored;
//   * any other key is an error unless `allow_unknown_keys` is set (then recorded in
//     `ignored_keys`).
//
// Validate() rejects everything the port does not implement (timestep conditioning, noise
// injection, non-spatiotemporal or non-residual upsamplers, channel-changing up blocks, "conv"
// downsamplers, patch_size_t != 1, ...) and inconsistent tuples, one message per violation, all
// in one ConfigError.
//
// Decoder tuples are stored as written in the JSON; the decoder reverses them (README §2.1
// "reversal quirk"): the *last* entry of decoder_block_out_channels / decoder_layers_per_block
// ... belongs to the mid block / up_blocks.0. The Decoder*() accessors return them in module
// order.
#ifndef WMSERVE_WORKER_MODELS_LTX2_VAE_CONFIG_H_
#define WMSERVE_WORKER_MODELS_LTX2_VAE_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace wmserve::worker::ltx2 {

struct VaeConfig {
  std::string name = "ltx2";  // the preset name; "custom" for parsed JSON without one

  // --- diffusers keys (LTX-2.0 values, ltx2-spec §1.1) ---
  int in_channels = 3;
  int out_channels = 3;
  int latent_channels = 128;
  std::vector<int> block_out_channels = {256, 512, 1024, 2048};
  std::vector<std::string> down_block_types = {"LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D",
                                               "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D"};
  std::vector<int> layers_per_block = {4, 6, 6, 2, 2};  // last entry: encoder mid block
  std::vector<bool> spatio_temporal_scaling = {true, true, true, true};
  std::vector<std::string> downsample_type = {"spatial", "temporal", "spatiotemporal",
                                              "spatiotemporal"};
  std::vector<int> decoder_block_out_channels = {256, 512, 1024};
  std::vector<int> decoder_layers_per_block = {5, 5, 5, 5};
  std::vector<bool> decoder_spatio_temporal_scaling = {true, true, true};
  std::vector<bool> decoder_inject_noise = {false, false, false, false};
  std::vector<std::string> upsample_type = {"spatiotemporal", "spatiotemporal", "spatiotemporal"};
  std::vector<bool> upsample_residual = {true, true, true};
  std::vector<int> upsample_factor = {2, 2, 2};
  bool timestep_conditioning = false;
  int patch_size = 4;
  int patch_size_t = 1;
  double resnet_norm_eps = 1e-6;  // only the channel-changing shortcut uses it; never built
  double scaling_factor = 1.0;
  bool encoder_causal = true;
  bool decoder_causal = false;
  std::string encoder_spatial_padding_mode = "zeros";
  std::string decoder_spatial_padding_mode = "reflect";
  int spatial_compression_ratio = 32;  // as written; Validate() checks it against the layers
  int temporal_compression_ratio = 8;

  // --- wmserve extensions ---
  int pixel_height = 704;
  int pixel_width = 1280;

  // --- constants of the released code (not read from JSON) ---
  double pixel_norm_eps = 1e-8;  // PerChannelRMSNorm, inside the sqrt (ltx2-spec §1.3 P2)

  // Keys skipped because allow_unknown_keys was set.
  std::vector<std::string> ignored_keys;

  // --- construction ---
  // Parses diffusers-style JSON (see the file comment). Throws ConfigError (JSON syntax errors
  // included). Does not call Validate().
  static VaeConfig FromDiffusersJson(std::string_view json, bool allow_unknown_keys = false);
  // "tiny", "ltx2" or "full", parsed from the compiled-in JSON and validated.
  static VaeConfig Preset(std::string_view name);
  // Reads `path`, parses and validates it. Errors name the path.
  static VaeConfig FromFile(const std::string& path);

  // Serialises to the same JSON format (diffusers keys + wmserve extensions), pretty-printed.
  std::string ToJson() const;

  // Throws ConfigError listing every violated constraint.
  void Validate() const;

  // --- derived structure (module order) ---
  int num_down_blocks() const { return static_cast<int>(block_out_channels.size()); }
  int num_up_blocks() const { return static_cast<int>(decoder_block_out_channels.size()); }
  // Downsampler stride (t, h, w) of encoder down block i: spatial (1,2,2), temporal (2,1,1),
  // spatiotemporal (2,2,2).
  std::array<int, 3> DownsampleStride(int block) const;
  // Decoder tuples in module order (reversed from the JSON order).
  int DecoderBlockOutChannels(int up_block) const;   // reversed decoder_block_out_channels[i]
  int DecoderMidLayers() const;                      // reversed decoder_layers_per_block[0]
  int DecoderUpBlockLayers(int up_block) const;      // reversed decoder_layers_per_block[i + 1]
  int DecoderUpsampleFactor(int up_block) const;     // reversed upsample_factor[i]
  bool DecoderUpsampleResidual(int up_block) const;  // reversed upsample_residual[i]

  // Compression implied by the layers: patch_size x the product of the downsampler strides.
  int spatial_ratio() const;   // 32
  int temporal_ratio() const;  // 8

  // --- latent geometry (ltx2-spec §1.2) ---
  // F = 1 + 8k pixel frames <-> 1 + k latent frames. LatentFrames throws InvalidInputError for
  // any other F (ltx2-spec §5 invariant 1).
  int64_t LatentFrames(int64_t pixel_frames) const;
  int64_t PixelFrames(int64_t latent_frames) const;  // 8(T-1)+1
  // Pixel rows/columns <-> latent rows/columns (704 <-> 22, 1280 <-> 40). LatentSize throws
  // InvalidInputError unless `pixels` is a positive multiple of the spatial ratio.
  int64_t LatentSize(int64_t pixels) const;
  int64_t PixelSize(int64_t latent) const { return latent * spatial_ratio(); }
  // The preset's latent grid (pixel_height / 32, pixel_width / 32).
  int64_t latent_height() const { return pixel_height / spatial_ratio(); }
  int64_t latent_width() const { return pixel_width / spatial_ratio(); }
};

// The compiled-in preset JSON ("tiny", "ltx2"; "full" is an alias of "ltx2"). Throws
// ConfigError for other names. Byte-identical to presets/vae_<name>.json (a test checks).
std::string_view VaePresetJson(std::string_view name);
std::vector<std::string> VaePresetNames();

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_VAE_CONFIG_H_
