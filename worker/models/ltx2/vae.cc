// The LTX-2.0 video VAE: weights, encoder, decoders and the streaming decoder (see vae.h).
#include "worker/models/ltx2/vae.h"

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "worker/models/sana/ops.h"

namespace wmserve::worker::ltx2 {
using sana::SeededGenerator;
using sana::ShapeOf;
using sana::TensorSeed;

namespace {

using EncoderParams = VideoVae::EncoderParams;
using DecoderParams = VideoVae::DecoderParams;
using ResnetParams = VideoVae::ResnetParams;

constexpr int64_t kKernelVolume = 27;  // every conv is 3x3x3 (ltx2-spec §1.9)

SpatialPadding ParsePadding(const std::string& mode) {
  return mode == "reflect" ? SpatialPadding::kReflect : SpatialPadding::kZeros;
}

// Supplies the conv of module `name` ("encoder.conv_in.conv") with in/out channels; the
// builders below call it once per conv, in module (= cache traversal) order.
using ConvLookup = std::function<ConvParams(const std::string& name, int64_t in, int64_t out)>;

ResnetParams Resnet(const ConvLookup& conv, const std::string& prefix, int64_t channels) {
  ResnetParams r;
  r.conv1 = conv(prefix + ".conv1.conv", channels, channels);
  r.conv2 = conv(prefix + ".conv2.conv", channels, channels);
  return r;
}

// LTX2VideoEncoder3d (ltx2-spec §1.4, README §2.2): conv_in maps the patchified pixels to
// latent_channels; down block i runs its resnets at its input width and its downsampler maps to
// block_out_channels[i]; the mid block runs at the last width; conv_out gives L + 1 channels.
EncoderParams BuildEncoder(const VaeConfig& c, const ConvLookup& conv) {
  EncoderParams e;
  int64_t channels = c.latent_channels;
  e.conv_in = conv("encoder.conv_in.conv",
                   static_cast<int64_t>(c.in_channels) * c.patch_size * c.patch_size, channels);
  for (int i = 0; i < c.num_down_blocks(); ++i) {
    const std::string prefix = "encoder.down_blocks." + std::to_string(i);
    VideoVae::DownBlockParams block;
    for (int j = 0; j < c.layers_per_block[static_cast<size_t>(i)]; ++j) {
      block.resnets.push_back(Resnet(conv, prefix + ".resnets." + std::to_string(j), channels));
    }
    const auto stride = c.DownsampleStride(i);
    block.stride = {stride[0], stride[1], stride[2]};
    block.out_channels = c.block_out_channels[static_cast<size_t>(i)];
    block.downsampler = conv(prefix + ".downsamplers.0.conv.conv", channels,
                             block.out_channels / (stride[0] * stride[1] * stride[2]));
    channels = block.out_channels;
    e.down_blocks.push_back(std::move(block));
  }
  for (int j = 0; j < c.layers_per_block.back(); ++j) {
    e.mid.push_back(Resnet(conv, "encoder.mid_block.resnets." + std::to_string(j), channels));
  }
  e.conv_out = conv("encoder.conv_out.conv", channels, c.latent_channels + 1);
  return e;
}

// LTX2VideoDecoder3d (ltx2-spec §1.6) with the reversed tuples (README §2.1): conv_in to C0,
// the mid block at C0, then per up block an upsampler C -> C/f (conv C -> 8C/f) and resnets at
// C/f, conv_out to out_channels * p^2.
DecoderParams BuildDecoder(const VaeConfig& c, const ConvLookup& conv) {
  DecoderParams d;
  int64_t channels = c.DecoderBlockOutChannels(0);
  d.conv_in = conv("decoder.conv_in.conv", c.latent_channels, channels);
  for (int j = 0; j < c.DecoderMidLayers(); ++j) {
    d.mid.push_back(Resnet(conv, "decoder.mid_block.resnets." + std::to_string(j), channels));
  }
  for (int i = 0; i < c.num_up_blocks(); ++i) {
    const std::string prefix = "decoder.up_blocks." + std::to_string(i);
    VideoVae::UpBlockParams block;
    block.factor = c.DecoderUpsampleFactor(i);
    block.residual = c.DecoderUpsampleResidual(i);
    block.upsampler =
        conv(prefix + ".upsamplers.0.conv.conv", channels, channels * 8 / block.factor);
    channels /= block.factor;
    for (int j = 0; j < c.DecoderUpBlockLayers(i); ++j) {
      block.resnets.push_back(Resnet(conv, prefix + ".resnets." + std::to_string(j), channels));
    }
    d.up_blocks.push_back(std::move(block));
  }
  d.conv_out = conv("decoder.conv_out.conv", channels,
                    static_cast<int64_t>(c.out_channels) * c.patch_size * c.patch_size);
  return d;
}

int64_t CountParameters(const VaeConfig& c, bool encoder) {
  c.Validate();
  int64_t total = 0;
  const ConvLookup count = [&](const std::string&, int64_t in, int64_t out) {
    total += in * out * kKernelVolume + out;
    return ConvParams{};
  };
  if (encoder) {
    BuildEncoder(c, count);
  } else {
    BuildDecoder(c, count);
  }
  return total;
}

int64_t DecoderConvCount(const DecoderParams& d) {
  int64_t n = 2 + 2 * static_cast<int64_t>(d.mid.size());  // conv_in, conv_out, mid
  for (const auto& block : d.up_blocks) n += 1 + 2 * static_cast<int64_t>(block.resnets.size());
  return n;
}

// --- dummy weights ---------------------------------------------------------------------------

// Standard normal float32 values from a private generator (a reseeded clone of the device's
// default one, so the process's global RNG is neither used nor disturbed).
at::Tensor StandardNormal(const std::vector<int64_t>& shape, uint64_t seed, c10::Device device) {
  at::Generator gen = SeededGenerator(device, seed);
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(device));
  out.normal_(0.0, 1.0, gen);
  return out;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

// --- DecoderStreamState ----------------------------------------------------------------------

int64_t DecoderStreamState::Bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor& t : conv_frames) {
    if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
  }
  return bytes;
}

// --- VideoVae: construction, counts, weights ---------------------------------------------------

VideoVae::VideoVae(const VaeConfig& config, c10::ScalarType dtype, c10::Device device)
    : config_(config),
      dtype_(dtype),
      device_(device),
      encoder_padding_(ParsePadding(config.encoder_spatial_padding_mode)),
      decoder_padding_(ParsePadding(config.decoder_spatial_padding_mode)) {
  config_.Validate();
  if (!c10::isFloatingType(dtype)) {
    throw ConfigError(std::string("VideoVae: dtype ") + c10::toString(dtype) +
                      " is not a floating-point type");
  }
}

std::map<std::string, std::vector<int64_t>> VideoVae::ExpectedTensors(const VaeConfig& config) {
  config.Validate();
  std::map<std::string, std::vector<int64_t>> expected;
  const ConvLookup record = [&](const std::string& name, int64_t in, int64_t out) {
    expected[name + ".weight"] = {out, in, 3, 3, 3};
    expected[name + ".bias"] = {out};
    return ConvParams{};
  };
  BuildEncoder(config, record);
  BuildDecoder(config, record);
  expected["latents_mean"] = {config.latent_channels};
  expected["latents_std"] = {config.latent_channels};
  return expected;
}

int64_t VideoVae::EncoderParameterCount(const VaeConfig& config) {
  return CountParameters(config, /*encoder=*/true);
}

int64_t VideoVae::DecoderParameterCount(const VaeConfig& config) {
  return CountParameters(config, /*encoder=*/false);
}

int64_t VideoVae::ParameterCount(const VaeConfig& config) {
  return EncoderParameterCount(config) + DecoderParameterCount(config);
}

int64_t VideoVae::StreamingCacheElements(const VaeConfig& config, int64_t batch,
                                         int64_t latent_height, int64_t latent_width) {
  config.Validate();
  // Every conv caches 2 frames of its input at its own resolution (ltx2-spec §1.8).
  int64_t area = latent_height * latent_width;
  int64_t channels = config.DecoderBlockOutChannels(0);
  int64_t per_frame = config.latent_channels * area;                      // conv_in
  per_frame += 2 * int64_t{config.DecoderMidLayers()} * channels * area;  // mid resnets
  for (int i = 0; i < config.num_up_blocks(); ++i) {
    per_frame += channels * area;  // the upsampler's conv
    area *= 4;
    channels /= config.DecoderUpsampleFactor(i);
    per_frame += 2 * int64_t{config.DecoderUpBlockLayers(i)} * channels * area;
  }
  per_frame += channels * area;  // conv_out
  return 2 * batch * per_frame;
}

void VideoVae::Install(std::map<std::string, at::Tensor> tensors) {
  const ConvLookup bind = [&](const std::string& name, int64_t, int64_t) {
    return ConvParams{tensors.at(name + ".weight"), tensors.at(name + ".bias")};
  };
  EncoderParams encoder = BuildEncoder(config_, bind);
  DecoderParams decoder = BuildDecoder(config_, bind);
  const int64_t l = config_.latent_channels;
  latents_mean_ = tensors.at("latents_mean").view({1, l, 1, 1, 1});
  latents_std_ = tensors.at("latents_std").view({1, l, 1, 1, 1});
  encoder_ = std::move(encoder);
  decoder_ = std::move(decoder);
  tensors_ = std::move(tensors);
  loaded_ = true;
}

void VideoVae::LoadWeights(const SafetensorsFile& file) {
  const auto expected = ExpectedTensors(config_);
  file.CheckTensors(expected);
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, shape] : expected) {
    (void)shape;
    const bool buffer = name == "latents_mean" || name == "latents_std";
    tensors[name] = file.Load(name, buffer ? at::kFloat : dtype_, device_);
  }
  Install(std::move(tensors));
}

void VideoVae::InitDummyWeights(uint64_t seed) {
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, shape] : ExpectedTensors(config_)) {
    // The golden `init_rules` (README §4).
    at::Tensor values = StandardNormal(shape, TensorSeed(seed, name), device_);
    if (name == "latents_mean") {
      values.mul_(0.2);
    } else if (name == "latents_std") {
      values.mul_(0.3).exp_();
    } else if (EndsWith(name, ".bias")) {
      values.mul_(0.1);
    } else {
      const int64_t fan_in = shape[1] * kKernelVolume;
      values.div_(std::sqrt(static_cast<double>(fan_in)));
    }
    const bool buffer = name == "latents_mean" || name == "latents_std";
    tensors[name] = buffer ? values : values.to(dtype_);
  }
  Install(std::move(tensors));
}

const at::Tensor& VideoVae::Parameter(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw std::out_of_range("VideoVae: no tensor '" + name + "'" +
                            (loaded_ ? "" : " (no weights loaded)"));
  }
  return it->second;
}

void VideoVae::SetParameter(const std::string& name, const at::Tensor& value) {
  const at::Tensor& slot = Parameter(name);
  if (!value.defined() || value.sizes() != slot.sizes()) {
    throw std::invalid_argument("VideoVae::SetParameter: '" + name + "' has shape " + ShapeOf(slot) +
                                ", got " + ShapeOf(value));
  }
  c10::NoGradGuard no_grad;
  slot.copy_(value);  // in place: the bound ConvParams share this storage
}

void VideoVae::RequireLoaded(const char* what) const {
  if (!loaded_) {
    throw std::runtime_error(std::string("VideoVae::") + what +
                             ": no weights loaded (call LoadWeights or InitDummyWeights)");
  }
}

// --- input checks ----------------------------------------------------------------------------

at::Tensor VideoVae::CheckedPixels(const at::Tensor& pixels, const char* what) const {
  const int64_t ratio_t = config_.temporal_ratio(), ratio_s = config_.spatial_ratio();
  const std::string expected = "expected (B, " + std::to_string(config_.in_channels) + ", 1+" +
                               std::to_string(ratio_t) + "k, " + std::to_string(ratio_s) + "a, " +
                               std::to_string(ratio_s) + "b)";
  if (!pixels.defined() || pixels.dim() != 5 || pixels.size(0) < 1 ||
      pixels.size(1) != config_.in_channels || !pixels.is_floating_point()) {
    throw InvalidInputError(
        std::string(what) + ": pixels has shape " + ShapeOf(pixels) +
        (pixels.defined() && !pixels.is_floating_point() ? " and a non-floating-point dtype" : "") +
        ", " + expected);
  }
  const int64_t t = pixels.size(2), h = pixels.size(3), w = pixels.size(4);
  if (t < 1 || (t - 1) % ratio_t != 0) {
    throw InvalidInputError(std::string(what) + ": pixels has " + std::to_string(t) +
                            " frames, not 1 + " + std::to_string(ratio_t) + "k (" + expected + ")");
  }
  if (h < ratio_s || w < ratio_s || h % ratio_s != 0 || w % ratio_s != 0) {
    throw InvalidInputError(std::string(what) + ": pixels is " + std::to_string(h) + "x" +
                            std::to_string(w) + ", not a positive multiple of " +
                            std::to_string(ratio_s) + " in H and W (" + expected + ")");
  }
  return pixels.to(device_, dtype_);
}

at::Tensor VideoVae::CheckedLatents(const at::Tensor& latents, const char* what) const {
  if (!latents.defined() || latents.dim() != 5 || latents.size(0) < 1 ||
      latents.size(1) != config_.latent_channels || latents.size(2) < 1 || latents.size(3) < 1 ||
      latents.size(4) < 1 || !latents.is_floating_point()) {
    throw InvalidInputError(std::string(what) + ": latents has shape " + ShapeOf(latents) +
                            ", expected floating-point (B, " +
                            std::to_string(config_.latent_channels) + ", T, h, w) with T >= 1");
  }
  if (decoder_padding_ == SpatialPadding::kReflect &&
      (latents.size(3) < 2 || latents.size(4) < 2)) {
    // PyTorch reflect padding needs 2 rows/columns (README §5.10).
    throw InvalidInputError(std::string(what) + ": latents is " + std::to_string(latents.size(3)) +
                            "x" + std::to_string(latents.size(4)) +
                            " per frame; the decoder's reflect padding needs h, w >= 2");
  }
  return latents;
}

// --- encode ----------------------------------------------------------------------------------

at::Tensor VideoVae::RunEncoder(const at::Tensor& pixels, bool latent_only,
                                const VaeTrace* trace) const {
  const TemporalPadding time =
      config_.encoder_causal ? TemporalPadding::kCausal : TemporalPadding::kNonCausal;
  const SpatialPadding space = encoder_padding_;
  const double eps = config_.pixel_norm_eps;
  auto observe = [&](const std::string& name, const at::Tensor& value) {
    if (trace != nullptr && *trace) (*trace)(name, value);
  };

  at::Tensor x = Patchify(pixels, config_.patch_size);
  observe("patchify", x);
  x = CausalConv3d(x, encoder_.conv_in, time, space);
  observe("conv_in", x);
  for (size_t i = 0; i < encoder_.down_blocks.size(); ++i) {
    const DownBlockParams& block = encoder_.down_blocks[i];
    const std::string prefix = "down_blocks." + std::to_string(i);
    for (size_t j = 0; j < block.resnets.size(); ++j) {
      x = ResnetBlock(x, block.resnets[j].conv1, block.resnets[j].conv2, time, space, eps);
      observe(prefix + ".resnets." + std::to_string(j), x);
    }
    x = Downsample(x, block.downsampler, block.stride, block.out_channels, time, space);
    observe(prefix, x);
  }
  for (const ResnetParams& r : encoder_.mid) {
    x = ResnetBlock(x, r.conv1, r.conv2, time, space, eps);
  }
  observe("mid_block", x);
  // x is a fresh activation here; it may be normalised in place unless an observer saw it.
  x = PixelNormSilu(x, eps, /*x_is_scratch=*/trace == nullptr);
  if (latent_only) {
    // The posterior mode is the first L channels; the log-variance channel is not needed
    // (ltx2-spec §1.4).
    const int64_t l = config_.latent_channels;
    const ConvParams mean_rows{encoder_.conv_out.weight.narrow(0, 0, l),
                               encoder_.conv_out.bias.narrow(0, 0, l)};
    return CausalConv3d(x, mean_rows, time, space);
  }
  x = CausalConv3d(x, encoder_.conv_out, time, space);
  observe("conv_out", x);
  return x;
}

at::Tensor VideoVae::EncodeMoments(const at::Tensor& pixels, const VaeTrace* trace) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("EncodeMoments");
  const at::Tensor raw =
      RunEncoder(CheckedPixels(pixels, "EncodeMoments"), /*latent_only=*/false, trace)
          .to(at::kFloat);
  // [mu | log-variance channel repeated L times] (README §5.4): raw has L+1 channels, the last
  // one is appended L-1 more times.
  const int64_t l = config_.latent_channels;
  std::vector<int64_t> repeated = raw.sizes().vec();
  repeated[1] = l - 1;
  return at::cat({raw, raw.narrow(1, l, 1).expand(repeated)}, 1);
}

at::Tensor VideoVae::EncodeMean(const at::Tensor& pixels) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("EncodeMean");
  return RunEncoder(CheckedPixels(pixels, "EncodeMean"), /*latent_only=*/true, nullptr)
      .to(at::kFloat);
}

at::Tensor VideoVae::Encode(const at::Tensor& pixels) const {
  return NormalizeLatents(EncodeMean(pixels));
}

// --- normalisation ---------------------------------------------------------------------------

at::Tensor VideoVae::NormalizeLatents(const at::Tensor& mean) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("NormalizeLatents");
  CheckedLatents(mean, "NormalizeLatents");
  // (mu - latents_mean) * scaling_factor / latents_std, in this order (S-BLD vae_encode).
  return mean.to(device_, at::kFloat)
      .sub(latents_mean_)
      .mul_(config_.scaling_factor)
      .div_(latents_std_);
}

at::Tensor VideoVae::DenormalizeLatents(const at::Tensor& z) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("DenormalizeLatents");
  CheckedLatents(z, "DenormalizeLatents");
  // z * latents_std / scaling_factor + latents_mean (S-BLD vae_decode, S-SDEC decode_chunk).
  return z.to(device_, at::kFloat)
      .mul(latents_std_)
      .div_(config_.scaling_factor)
      .add_(latents_mean_);
}

// --- decode ----------------------------------------------------------------------------------

at::Tensor VideoVae::RunDecoder(const at::Tensor& mean, TemporalPadding time,
                                DecoderStreamState* state, const VaeTrace* trace) const {
  const SpatialPadding space = decoder_padding_;
  const double eps = config_.pixel_norm_eps;
  auto observe = [&](const std::string& name, const at::Tensor& value) {
    if (trace != nullptr && *trace) (*trace)(name, value);
  };
  if (state != nullptr && state->empty()) {
    state->conv_frames.assign(static_cast<size_t>(DecoderConvCount(decoder_)), at::Tensor());
    state->upsampler_started.assign(decoder_.up_blocks.size(), false);
  }
  // Cache slots in traversal order; one per conv call below.
  size_t slot = 0;
  auto next_cache = [&]() -> at::Tensor* {
    return state != nullptr ? &state->conv_frames.at(slot++) : nullptr;
  };
  auto resnet = [&](const at::Tensor& x, const ResnetParams& r) {
    at::Tensor* cache1 = next_cache();
    at::Tensor* cache2 = next_cache();
    return ResnetBlock(x, r.conv1, r.conv2, time, space, eps, cache1, cache2);
  };

  at::Tensor x = CausalConv3d(mean, decoder_.conv_in, time, space, next_cache());
  observe("conv_in", x);
  for (const ResnetParams& r : decoder_.mid) x = resnet(x, r);
  observe("mid_block", x);
  for (size_t i = 0; i < decoder_.up_blocks.size(); ++i) {
    const UpBlockParams& block = decoder_.up_blocks[i];
    const std::string prefix = "up_blocks." + std::to_string(i);
    // One-call decodes always drop the first upsampled frame; a stream only on its first call
    // (ltx2-spec §1.8).
    bool drop_first = true;
    if (state != nullptr) {
      drop_first = !state->upsampler_started[i];
      state->upsampler_started[i] = true;
    }
    x = Upsample(x, block.upsampler, block.factor, block.residual, drop_first, time, space,
                 next_cache());
    observe(prefix + ".upsamplers.0", x);
    for (const ResnetParams& r : block.resnets) x = resnet(x, r);
    observe(prefix, x);
  }
  x = PixelNormSilu(x, eps, /*x_is_scratch=*/trace == nullptr);
  x = CausalConv3d(x, decoder_.conv_out, time, space, next_cache());
  return Unpatchify(x, config_.patch_size).to(at::kFloat);
}

at::Tensor VideoVae::DecodeDenormalized(const at::Tensor& mean, TemporalPadding time,
                                        const VaeTrace* trace) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("DecodeDenormalized");
  const at::Tensor x = CheckedLatents(mean, "DecodeDenormalized").to(device_, dtype_);
  return RunDecoder(x, time, nullptr, trace);
}

at::Tensor VideoVae::DecodeOffline(const at::Tensor& z) const {
  return DecodeDenormalized(DenormalizeLatents(z), TemporalPadding::kNonCausal);
}

at::Tensor VideoVae::DecodeCausal(const at::Tensor& z) const {
  return DecodeDenormalized(DenormalizeLatents(z), TemporalPadding::kCausal);
}

at::Tensor VideoVae::Decode(const at::Tensor& z) const {
  return config_.decoder_causal ? DecodeCausal(z) : DecodeOffline(z);
}

at::Tensor VideoVae::DecodeStreaming(const at::Tensor& mean, DecoderStreamState* state) const {
  c10::NoGradGuard no_grad;
  RequireLoaded("DecodeStreaming");
  if (state == nullptr) throw std::invalid_argument("VideoVae::DecodeStreaming: null state");
  const at::Tensor x = CheckedLatents(mean, "DecodeStreaming").to(device_, dtype_);
  if (!state->empty()) {
    // The cached frames of conv_in are the previous latents: the stream's B, h, w.
    const at::Tensor& first = state->conv_frames.front();
    if (first.defined() &&
        (first.size(0) != x.size(0) || first.size(3) != x.size(3) || first.size(4) != x.size(4))) {
      throw InvalidInputError("DecodeStreaming: latents has shape " + ShapeOf(x) +
                              " but the stream was started with batch " +
                              std::to_string(first.size(0)) + " and " +
                              std::to_string(first.size(3)) + "x" + std::to_string(first.size(4)) +
                              " latents (call Reset first)");
    }
  }
  return RunDecoder(x, TemporalPadding::kCausal, state, nullptr);
}

// --- CausalStreamingDecoder ------------------------------------------------------------------

CausalStreamingDecoder::CausalStreamingDecoder(std::shared_ptr<const VideoVae> vae)
    : CausalStreamingDecoder(std::move(vae), Options()) {}

CausalStreamingDecoder::CausalStreamingDecoder(std::shared_ptr<const VideoVae> vae, Options options)
    : vae_(std::move(vae)), options_(options) {
  if (!vae_) throw std::invalid_argument("CausalStreamingDecoder: null VideoVae");
  if (options_.max_latent_frames_per_pass < 0) {
    throw std::invalid_argument("CausalStreamingDecoder: max_latent_frames_per_pass < 0");
  }
}

void CausalStreamingDecoder::Reset() {
  state_ = DecoderStreamState();
  latent_frames_ = 0;
}

at::Tensor CausalStreamingDecoder::DecodeChunk(const at::Tensor& z_chunk) {
  c10::NoGradGuard no_grad;
  // De-normalise in float32, then decode causally with the stream's caches (S-SDEC
  // decode_chunk). A chunk of n frames in one pass equals n one-frame passes up to rounding:
  // every conv sees the same [cached 2 frames, new frames] windows.
  const at::Tensor mean = vae_->DenormalizeLatents(z_chunk);
  const int64_t frames = mean.size(2);
  const int64_t pass =
      options_.max_latent_frames_per_pass > 0 ? options_.max_latent_frames_per_pass : frames;
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < frames; start += pass) {
    parts.push_back(
        vae_->DecodeStreaming(mean.narrow(2, start, std::min(pass, frames - start)), &state_));
  }
  latent_frames_ += frames;
  return parts.size() == 1 ? parts.front() : at::cat(parts, 2);
}

}  // namespace wmserve::worker::ltx2
