// File: the LTX-2.0 video VAE in LibTorch: encoder, offline (non-causal) decoder, causal decoder
// and the causal streaming decoder with a per-layer cache (ltx2-spec §1; golden data and exact
// semantics: ../shared/golden/ltx2-vae-tiny/README.md).
//
// Depends on LibTorch and the C++ standard library only (builds in the model-only build).
//
// Shapes (ltx2-spec §5 invariant 1), tensors (B, C, T, H, W):
//   encode  (B, 3, 1+8k, 32a, 32b) in [-1, 1]  ->  z (B, L, 1+k, a, b)   (L = 128 at full scale)
//   decode  z (B, L, T, a, b)                  ->  (B, 3, 8(T-1)+1, 32a, 32b), un-clamped
// z is always the *normalised* latent the DiTs work on (ltx2-spec §1.5):
//   z  = (mu - latents_mean) * scaling_factor / latents_std,
//   mu = z * latents_std / scaling_factor + latents_mean,
// computed in float32 on the VAE's device; the conv stack runs in the VAE dtype (bf16 in SANA-WM,
// ltx2-spec §1.1); encode and decode results are returned as float32 on the VAE's device.
//
// Decoders:
//   * DecodeOffline: the official LTX-2.0 decoder (decoder_causal = false): every temporal conv
//     replicates the first and the last frame. No temporal tiling (ltx2-spec §1.7, whose two
//     reference conventions disagree): activation memory grows linearly with T.
//   * DecodeCausal: every temporal conv prepends two copies of its first frame (SANA's causal
//     class). Pixel frames <= 8j depend only on latent frames <= j.
//   * Decode: what the reference `vae.decode(z)` does for this config: causal iff
//     decoder_causal (the "causal = arg OR is_causal" quirk of ltx2-spec §1.1 with arg = false).
//   * CausalStreamingDecoder: DecodeCausal chunk by chunk with a per-layer cache; equal to one
//     DecodeCausal of the concatenated latents up to fp32 rounding (ltx2-spec §5 invariant 4).
//
// Threading: a loaded VideoVae is read-only; its const methods may run concurrently from many
// threads (e.g. one CausalStreamingDecoder per rollout sharing one VideoVae). LoadWeights,
// InitDummyWeights and SetParameter must not race with anything. Every entry point disables
// autograd itself (at::NoGradGuard; not InferenceMode, so outputs and caches stay ordinary
// tensors that callers may modify in place).
//
// Errors: ConfigError (invalid config), InvalidInputError (unusable inputs: frame counts,
// sizes, channels; the message names the tensor and the expected shape), SafetensorsError (a
// weights file with missing, unexpected or mis-shaped tensors; every problem is named),
// std::runtime_error (used before weights were loaded), c10::Error (device OOM and the like).
#ifndef WMSERVE_WORKER_MODELS_LTX2_VAE_H_
#define WMSERVE_WORKER_MODELS_LTX2_VAE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "worker/models/ltx2/vae_config.h"
#include "worker/models/ltx2/vae_ops.h"
#include "worker/models/ltx2/vae_pixels.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::ltx2 {

using sana::ConfigError;
using sana::InvalidInputError;
using sana::SafetensorsError;
using sana::SafetensorsFile;

// Observer of named intermediate activations, for parity tests. Names follow the golden files
// without their "inter.image." / "inter.causal." prefix: encoder "patchify", "conv_in",
// "down_blocks.{i}.resnets.{j}", "down_blocks.{i}", "mid_block", "conv_out" (raw, L+1
// channels); decoder "conv_in", "mid_block", "up_blocks.{i}.upsamplers.0", "up_blocks.{i}".
// Values are in the VAE dtype and must be copied if kept beyond the call.
using VaeTrace = std::function<void(const std::string& name, const at::Tensor& value)>;

// Per-stream state of the causal streaming decode (ltx2-spec §1.8, README §3): for every decoder
// conv in traversal order (conv_in, mid resnets' conv1/conv2, per up block its upsampler conv and
// resnets, conv_out) the last 2 frames of its input, (B, C_in, 2, h, w); for every upsampler
// whether it has run (the first call drops the first output frame, later calls drop nothing).
struct DecoderStreamState {
  std::vector<at::Tensor> conv_frames;
  std::vector<bool> upsampler_started;
  bool empty() const { return conv_frames.empty(); }
  int64_t Bytes() const;
};

class VideoVae {
 public:
  // Validates `config` (ConfigError). Weights stay undefined until LoadWeights/InitDummyWeights;
  // they are held as `dtype` on `device` (latents_mean/std always as float32).
  explicit VideoVae(const VaeConfig& config, c10::ScalarType dtype = c10::ScalarType::Float,
                    c10::Device device = c10::Device(c10::kCPU));

  const VaeConfig& config() const { return config_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  bool loaded() const { return loaded_; }

  // --- tensors, counts ---------------------------------------------------------------------
  // Every tensor of the diffusers checkpoint (ltx2-spec §1.9), official name -> shape:
  // encoder.* / decoder.* `<module>.conv.weight` (out, in, 3, 3, 3) and `.conv.bias` (out), plus
  // the latents_mean / latents_std buffers (L).
  static std::map<std::string, std::vector<int64_t>> ExpectedTensors(const VaeConfig& config);
  // Parameter values (weights + biases), computed from the config; nothing is allocated.
  // LTX-2.0: 694,098,881 / 528,380,720 (ltx2-spec §1.10).
  static int64_t EncoderParameterCount(const VaeConfig& config);
  static int64_t DecoderParameterCount(const VaeConfig& config);
  // Encoder + decoder, without the 2L buffer values.
  static int64_t ParameterCount(const VaeConfig& config);
  int64_t ParameterCount() const { return ParameterCount(config_); }
  // Elements a CausalStreamingDecoder caches for `batch` streams of latent size h x w
  // (ltx2-spec §1.8: 297,594,880 at 22x40 for LTX-2.0, i.e. 704x1280 pixels).
  static int64_t StreamingCacheElements(const VaeConfig& config, int64_t batch,
                                        int64_t latent_height, int64_t latent_width);

  // --- weights -----------------------------------------------------------------------------
  // Strict: the file must hold exactly ExpectedTensors (SafetensorsError naming every missing,
  // unexpected and mis-shaped tensor; the VAE is left unchanged then). Any float dtype loads.
  void LoadWeights(const SafetensorsFile& file);
  // Seeded random weights at any config, with the golden `init_rules`: conv weights
  // N(0,1)/sqrt(in*27), biases 0.1*N(0,1), latents_mean 0.2*N(0,1), latents_std
  // exp(0.3*N(0,1)). Each tensor draws float32 values from its own generator seeded with
  // (seed, name) on the VAE's device, then converts: deterministic per (seed, device type),
  // and a bf16 VAE holds the rounded fp32 values.
  void InitDummyWeights(uint64_t seed);
  // A loaded tensor by official name (std::out_of_range naming it when unknown).
  const at::Tensor& Parameter(const std::string& name) const;
  // Overwrites a loaded tensor in place (shape must match; converted to its dtype/device).
  // For tests and weight surgery; not thread-safe against running forwards.
  void SetParameter(const std::string& name, const at::Tensor& value);

  // --- encode (ltx2-spec §1.4) ---------------------------------------------------------------
  // pixels: (B, in_channels, 1+8k, 32a, 32b), any float dtype, any device, values in [-1, 1].
  // The posterior parameters as diffusers holds them: (B, 2L, 1+k, a, b) float32 =
  // [mu (L) | the shared log-variance channel repeated L times] (README §5.4).
  at::Tensor EncodeMoments(const at::Tensor& pixels, const VaeTrace* trace = nullptr) const;
  // The posterior mode mu (B, L, 1+k, a, b), float32 (conv_out computes only these L channels).
  at::Tensor EncodeMean(const at::Tensor& pixels) const;
  // Normalised z = NormalizeLatents(EncodeMean(pixels)), what SANA-WM conditions on.
  at::Tensor Encode(const at::Tensor& pixels) const;

  // --- latent normalisation (ltx2-spec §1.5), float32 on the VAE device ------------------------
  at::Tensor NormalizeLatents(const at::Tensor& mean) const;
  at::Tensor DenormalizeLatents(const at::Tensor& z) const;

  // --- decode (ltx2-spec §1.6-1.7) -----------------------------------------------------------
  // z: normalised (B, L, T, a, b), T >= 1 (a, b >= 2 with reflect padding, README §5.10).
  // Returns float32 (B, out_channels, 8(T-1)+1, 32a, 32b), not clamped.
  at::Tensor DecodeOffline(const at::Tensor& z) const;
  at::Tensor DecodeCausal(const at::Tensor& z) const;
  at::Tensor Decode(const at::Tensor& z) const;
  // The decoder on de-normalised latents `mean` with the given temporal padding.
  at::Tensor DecodeDenormalized(const at::Tensor& mean, TemporalPadding time,
                                const VaeTrace* trace = nullptr) const;

  // --- streaming building block (CausalStreamingDecoder uses it) -------------------------------
  // Decodes de-normalised latents causally, continuing the stream whose state is `state`
  // (empty: a new stream). The first latent frame of a stream yields 1 pixel frame, every later
  // one 8. Returns float32 pixels.
  at::Tensor DecodeStreaming(const at::Tensor& mean, DecoderStreamState* state) const;

  // Weight structure in module order (internal; public so vae.cc's helpers can name it).
  struct ResnetParams {
    ConvParams conv1, conv2;
  };
  struct DownBlockParams {
    std::vector<ResnetParams> resnets;
    ConvParams downsampler;
    std::array<int64_t, 3> stride{};
    int64_t out_channels = 0;
  };
  struct UpBlockParams {
    ConvParams upsampler;
    int64_t factor = 2;
    bool residual = true;
    std::vector<ResnetParams> resnets;
  };
  struct EncoderParams {
    ConvParams conv_in;
    std::vector<DownBlockParams> down_blocks;
    std::vector<ResnetParams> mid;
    ConvParams conv_out;
  };
  struct DecoderParams {
    ConvParams conv_in;
    std::vector<ResnetParams> mid;
    std::vector<UpBlockParams> up_blocks;
    ConvParams conv_out;
  };

 private:
  void RequireLoaded(const char* what) const;
  void Install(std::map<std::string, at::Tensor> tensors);
  at::Tensor CheckedPixels(const at::Tensor& pixels, const char* what) const;
  at::Tensor CheckedLatents(const at::Tensor& latents, const char* what) const;
  // The encoder up to conv_out; `latent_only` keeps only the first L conv_out channels.
  at::Tensor RunEncoder(const at::Tensor& pixels, bool latent_only, const VaeTrace* trace) const;
  // The decoder on de-normalised latents already in the VAE dtype/device; `state` non-null
  // means streaming (causal padding with caches).
  at::Tensor RunDecoder(const at::Tensor& mean, TemporalPadding time, DecoderStreamState* state,
                        const VaeTrace* trace) const;

  VaeConfig config_;
  c10::ScalarType dtype_;
  c10::Device device_;
  SpatialPadding encoder_padding_;
  SpatialPadding decoder_padding_;
  bool loaded_ = false;
  std::map<std::string, at::Tensor> tensors_;  // official name -> tensor
  EncoderParams encoder_;                      // handles sharing tensors_' storage
  DecoderParams decoder_;
  at::Tensor latents_mean_;  // (1, L, 1, 1, 1) float32
  at::Tensor latents_std_;
};

// SANA-WM's streaming decode (ltx2-spec §1.8, S-SDEC `CausalVaeStreamingDecoder`) for one stream
// of latents. Holds the VAE by shared_ptr (weights shared read-only by any number of decoders)
// and the per-layer cache of its stream. Not thread-safe per instance; use one per rollout.
//
//   CausalStreamingDecoder dec(vae);
//   dec.DecodeChunk(z.narrow(2, 0, 4));   // sink + 3 latents -> 1 + 24 pixel frames
//   dec.DecodeChunk(z.narrow(2, 4, 3));   // -> 24 pixel frames, and so on
class CausalStreamingDecoder {
 public:
  struct Options {
    // Upper bound on latent frames per decoder pass (0: the whole chunk in one pass). Smaller
    // passes bound the transient activation memory (an 8-pixel-frame 704x1280 pass at the last
    // stage is 57.7 M elements per tensor) at the cost of smaller convs; the output is the same
    // up to rounding.
    int64_t max_latent_frames_per_pass = 0;
  };

  explicit CausalStreamingDecoder(std::shared_ptr<const VideoVae> vae);
  CausalStreamingDecoder(std::shared_ptr<const VideoVae> vae, Options options);

  // Forgets the stream: the next chunk is the first of a new stream (1 + 8(n-1) pixel frames).
  void Reset();
  // z_chunk: normalised latents (B, L, n, h, w), n >= 1, any float dtype/device. Returns float32
  // pixels on the VAE device: 1 + 8(n-1) frames for the first chunk of a stream, 8n afterwards.
  // B, h, w must stay the same within a stream (InvalidInputError otherwise).
  at::Tensor DecodeChunk(const at::Tensor& z_chunk);

  // Bytes held by the cache now (0 before the first chunk and after Reset).
  int64_t CacheBytes() const { return state_.Bytes(); }
  int64_t latent_frames_decoded() const { return latent_frames_; }
  const VideoVae& vae() const { return *vae_; }

 private:
  std::shared_ptr<const VideoVae> vae_;
  Options options_;
  DecoderStreamState state_;
  int64_t latent_frames_ = 0;
};

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_VAE_H_
