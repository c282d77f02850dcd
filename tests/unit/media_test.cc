// Media library: image decode/encode, fMP4 (H.264) encoder structure and decodability, video
// decoder and PSNR. The fMP4 checks parse ISO BMFF boxes independently of libavformat, so they
// test what a browser's MSE implementation would see.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/media/fmp4_encoder.h"
#include "worker/media/image_io.h"
#include "worker/media/rgb_image.h"
#include "worker/media/video_decoder.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavutil/frame.h>
}

namespace wmserve::media {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---------------------------------------------------------------------------------------------
// Synthetic content.

uint8_t Clamp8(double v) {
  return static_cast<uint8_t>(std::lround(std::fmin(255, std::fmax(0, v))));
}

// Smooth colour waves drifting with `t`: compressible, so lossy codecs should do well on it.
RgbImage SmoothImage(int width, int height, double t = 0) {
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  constexpr double kTwoPi = 6.283185307179586;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
      const double u = static_cast<double>(x) / width, v = static_cast<double>(y) / height;
      p[0] = Clamp8(128 + 90 * std::sin(kTwoPi * (1.3 * u + 0.04 * t)));
      p[1] = Clamp8(128 + 90 * std::cos(kTwoPi * (1.1 * v - 0.03 * t)));
      p[2] = Clamp8(128 + 70 * std::sin(kTwoPi * (0.7 * (u + v) + 0.05 * t)));
    }
  }
  return image;
}

RgbImage NoiseImage(int width, int height, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (uint8_t& b : image.pixels) b = static_cast<uint8_t>(rng());
  return image;
}

// Frames start_frame .. start_frame+count-1 of the moving smooth pattern, frame-major.
std::vector<RgbImage> MovingFrames(int width, int height, int start_frame, int count) {
  std::vector<RgbImage> frames;
  for (int i = 0; i < count; ++i) frames.push_back(SmoothImage(width, height, start_frame + i));
  return frames;
}

std::vector<uint8_t> Concat(const std::vector<RgbImage>& frames) {
  std::vector<uint8_t> out;
  for (const RgbImage& f : frames) out.insert(out.end(), f.pixels.begin(), f.pixels.end());
  return out;
}

double PsnrOrDie(const RgbImage& a, const RgbImage& b) {
  absl::StatusOr<double> psnr = Psnr(a, b);
  EXPECT_TRUE(psnr.ok()) << psnr.status();
  return psnr.ok() ? *psnr : 0;
}

// ---------------------------------------------------------------------------------------------
// Images.

TEST(ImageIo, PngRoundTripIsExact) {
  // Odd size and noise: any stride, channel-order or filtering bug changes some byte.
  const RgbImage original = NoiseImage(37, 23, 1);
  absl::StatusOr<std::string> png = EncodePng(original);
  ASSERT_TRUE(png.ok()) << png.status();
  absl::StatusOr<RgbImage> decoded = DecodeImage(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, 37);
  EXPECT_EQ(decoded->height, 23);
  EXPECT_EQ(decoded->pixels, original.pixels);
}

TEST(ImageIo, JpegRoundTripAbove30Db) {
  const RgbImage original = SmoothImage(160, 120);
  absl::StatusOr<std::string> jpeg = EncodeJpeg(original, 3);
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  ASSERT_GE(jpeg->size(), 3u);
  EXPECT_EQ(static_cast<uint8_t>((*jpeg)[0]), 0xFF);
  EXPECT_EQ(static_cast<uint8_t>((*jpeg)[1]), 0xD8);
  absl::StatusOr<RgbImage> decoded = DecodeImage(*jpeg);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->width, 160);
  ASSERT_EQ(decoded->height, 120);
  EXPECT_GT(PsnrOrDie(original, *decoded), 30.0);
}

TEST(ImageIo, JpegQualityFollowsQscale) {
  const RgbImage original = SmoothImage(96, 64);
  absl::StatusOr<std::string> best = EncodeJpeg(original, 2);
  absl::StatusOr<std::string> worst = EncodeJpeg(original, 31);
  ASSERT_TRUE(best.ok() && worst.ok());
  EXPECT_GT(best->size(), worst->size());
}

// A PNG in some non-RGB24 layout, made with libavcodec directly (EncodePng only writes RGB24).
std::string LibavPng(AVPixelFormat format, int width, int height,
                     void (*fill)(AVFrame& frame, int x, int y)) {
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
  AVCodecContext* ctx = avcodec_alloc_context3(codec);
  AVFrame* frame = av_frame_alloc();
  AVPacket* packet = av_packet_alloc();
  std::string out;
  ctx->width = width;
  ctx->height = height;
  ctx->pix_fmt = format;
  ctx->time_base = AVRational{1, 1};
  frame->format = format;
  frame->width = width;
  frame->height = height;
  if (avcodec_open2(ctx, codec, nullptr) >= 0 && av_frame_get_buffer(frame, 0) >= 0) {
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) fill(*frame, x, y);
    }
    if (avcodec_send_frame(ctx, frame) >= 0 && avcodec_receive_packet(ctx, packet) >= 0) {
      out.assign(reinterpret_cast<const char*>(packet->data), packet->size);
    }
  }
  av_packet_free(&packet);
  av_frame_free(&frame);
  avcodec_free_context(&ctx);
  return out;
}

TEST(ImageIo, DecodesGrayscalePngAsEqualChannels) {
  const std::string png = LibavPng(AV_PIX_FMT_GRAY8, 20, 10, [](AVFrame& f, int x, int y) {
    f.data[0][y * f.linesize[0] + x] = static_cast<uint8_t>(x * 12 + y);
  });
  ASSERT_FALSE(png.empty());
  absl::StatusOr<RgbImage> image = DecodeImage(png);
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->width, 20);
  for (int y = 0; y < 10; ++y) {
    for (int x = 0; x < 20; ++x) {
      const uint8_t* p = &image->pixels[(y * 20 + x) * 3];
      const int expected = x * 12 + y;
      EXPECT_NEAR(p[0], expected, 1) << x << "," << y;
      EXPECT_EQ(p[0], p[1]);
      EXPECT_EQ(p[1], p[2]);
    }
  }
}

TEST(ImageIo, DecodesRgbaPngDroppingAlpha) {
  const std::string png = LibavPng(AV_PIX_FMT_RGBA, 8, 6, [](AVFrame& f, int x, int y) {
    uint8_t* p = f.data[0] + y * f.linesize[0] + x * 4;
    p[0] = static_cast<uint8_t>(30 * x);
    p[1] = static_cast<uint8_t>(40 * y);
    p[2] = 200;
    p[3] = 255;
  });
  ASSERT_FALSE(png.empty());
  absl::StatusOr<RgbImage> image = DecodeImage(png);
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_EQ(image->pixels.size(), 8u * 6 * 3);
  const uint8_t* p = &image->pixels[(5 * 8 + 7) * 3];
  EXPECT_EQ(p[0], 210);
  EXPECT_EQ(p[1], 200);
  EXPECT_EQ(p[2], 200);
}

// A PNG consisting of a valid signature, an IHDR claiming width x height, and IEND (plus one
// empty IDAT), i.e. what a decompression bomb's header looks like. CRCs are left zero: the size
// check has to fire before any decoding.
std::string PngHeaderOnly(uint32_t width, uint32_t height) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  auto be32 = [&png](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) png.push_back(static_cast<char>(v >> shift));
  };
  be32(13);
  png += "IHDR";
  be32(width);
  be32(height);
  png += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  be32(0);
  be32(0);
  png += "IDAT";
  be32(0);
  be32(0);
  png += "IEND";
  be32(0);
  return png;
}

struct BadImageCase {
  const char* name;
  std::string bytes;
  ImageDecodeLimits limits;
  const char* message;
};

std::vector<BadImageCase> BadImageCases() {
  const std::string png = *EncodePng(SmoothImage(64, 32));
  const std::string jpeg = *EncodeJpeg(SmoothImage(64, 32));
  std::string corrupt_png = png;
  corrupt_png[png.size() / 2] ^= 0x5a;  // inside IDAT: zlib data or CRC no longer match
  return {
      {"empty", "", {}, "image: empty"},
      {"garbage",
       std::string("\x01\x02\x03\x04\x05garbage", 12),
       {},
       "image: not PNG or JPEG (first bytes 01 02 03 04)"},
      {"gif", "GIF89a\x10\x00\x10\x00", {}, "image: not PNG or JPEG (first bytes 47 49 46 38)"},
      {"short", "\x89P", {}, "image: not PNG or JPEG (first bytes 89 50)"},
      {"png_signature_only", png.substr(0, 8), {}, "image: corrupt or truncated PNG data"},
      {"png_truncated", png.substr(0, png.size() / 2), {}, "image: corrupt or truncated PNG data"},
      {"png_without_iend",
       png.substr(0, png.size() - 12),
       {},
       "image: corrupt or truncated PNG data"},
      {"png_corrupt", corrupt_png, {}, "image: corrupt or truncated PNG data"},
      {"jpeg_soi_only", jpeg.substr(0, 3), {}, "image: corrupt or truncated JPEG data"},
      {"jpeg_truncated",
       jpeg.substr(0, jpeg.size() / 2),
       {},
       "image: corrupt or truncated JPEG data"},
      {"jpeg_without_eoi",
       jpeg.substr(0, jpeg.size() - 2),
       {},
       "image: corrupt or truncated JPEG data"},
      {"png_bomb_header",
       PngHeaderOnly(9000, 100),
       {},
       "image: 9000x100 exceeds the 8192x8192 limit"},
      {"png_over_custom_limit", png, {32, 1000}, "image: 64x32 exceeds the 32x1000 limit"},
      {"jpeg_over_custom_limit", jpeg, {1000, 16}, "image: 64x32 exceeds the 1000x16 limit"},
  };
}

TEST(ImageIo, RejectsBadInputWithPreciseMessage) {
  for (const BadImageCase& c : BadImageCases()) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<RgbImage> image = DecodeImage(c.bytes, c.limits);
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(image.status().message()), HasSubstr(c.message));
  }
}

TEST(ImageIo, LimitsAreInclusive) {
  const std::string png = *EncodePng(SmoothImage(64, 32));
  EXPECT_TRUE(DecodeImage(png, {64, 32}).ok());
}

// Untrusted input must never crash the server: random byte flips, insertions and truncations of
// valid files either decode to the declared size or fail with INVALID_ARGUMENT.
TEST(ImageIo, SurvivesMutatedInput) {
  const std::string originals[] = {*EncodePng(NoiseImage(24, 16, 7)),
                                   *EncodeJpeg(SmoothImage(24, 16))};
  std::mt19937 rng(12345);
  for (const std::string& original : originals) {
    for (int iteration = 0; iteration < 300; ++iteration) {
      std::string bytes = original;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !bytes.empty(); ++e) {
        const size_t pos = rng() % bytes.size();
        switch (rng() % 3) {
          case 0:
            bytes[pos] = static_cast<char>(rng());
            break;
          case 1:
            bytes.insert(pos, 1, static_cast<char>(rng()));
            break;
          default:
            bytes.resize(pos);
            break;
        }
      }
      absl::StatusOr<RgbImage> image = DecodeImage(bytes);
      if (image.ok()) {
        EXPECT_EQ(image->pixels.size(), static_cast<size_t>(image->width) * image->height * 3);
      } else {
        EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << image.status();
        EXPECT_THAT(std::string(image.status().message()), StartsWith("image: "));
      }
    }
  }
}

TEST(ImageIo, EncodeRejectsBadArguments) {
  const RgbImage good = SmoothImage(16, 16);
  RgbImage short_buffer = good;
  short_buffer.pixels.pop_back();
  EXPECT_EQ(EncodePng(short_buffer).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(RgbImage{}).status().code(), absl::StatusCode::kInvalidArgument);
  for (int qscale : {1, 32}) {
    absl::Status s = EncodeJpeg(good, qscale).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("qscale ", qscale)));
  }
}

// ---------------------------------------------------------------------------------------------
// ISO BMFF parsing (independent of libavformat).

struct Box {
  std::string type;
  absl::string_view body;  // payload after the header
};

// Top-level boxes of `data`, handling 64-bit (size == 1) and to-the-end (size == 0) sizes.
absl::StatusOr<std::vector<Box>> ParseBoxes(absl::string_view data) {
  std::vector<Box> boxes;
  size_t pos = 0;
  auto be = [&data](size_t at, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(data[at + i]);
    return v;
  };
  while (pos < data.size()) {
    if (data.size() - pos < 8) return absl::DataLossError(absl::StrCat("short box at ", pos));
    uint64_t size = be(pos, 4);
    size_t header = 8;
    if (size == 1) {
      if (data.size() - pos < 16) return absl::DataLossError("short largesize");
      size = be(pos + 8, 8);
      header = 16;
    } else if (size == 0) {
      size = data.size() - pos;
    }
    if (size < header || size > data.size() - pos) {
      return absl::DataLossError(absl::StrCat("box at ", pos, " has bad size ", size));
    }
    boxes.push_back(
        {std::string(data.substr(pos + 4, 4)), data.substr(pos + header, size - header)});
    pos += size;
  }
  return boxes;
}

std::vector<std::string> Types(const std::vector<Box>& boxes) {
  std::vector<std::string> types;
  for (const Box& b : boxes) types.push_back(b.type);
  return types;
}

// The first box along `path` (each element a child of the previous), starting in `data`. The
// children of stsd and avc1 follow fixed fields (entry count, VisualSampleEntry), skipped here.
absl::StatusOr<absl::string_view> FindBox(absl::string_view data,
                                          const std::vector<std::string>& path) {
  absl::string_view current = data;
  for (const std::string& type : path) {
    size_t skip = 0;
    if (type == "avc1") skip = 8;   // stsd: version/flags + entry_count
    if (type == "avcC") skip = 78;  // avc1: VisualSampleEntry fields
    if (current.size() < skip) return absl::DataLossError("container too short");
    absl::StatusOr<std::vector<Box>> boxes = ParseBoxes(current.substr(skip));
    if (!boxes.ok()) return boxes.status();
    bool found = false;
    for (const Box& b : *boxes) {
      if (b.type == type) {
        current = b.body;
        found = true;
        break;
      }
    }
    if (!found) return absl::NotFoundError(absl::StrCat("no ", type, " box"));
  }
  return current;
}

// Big-endian reader that turns overruns into a sticky failure instead of UB.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  uint64_t Read(int bytes) {
    if (pos_ > data_.size() || data_.size() - pos_ < static_cast<size_t>(bytes)) {
      failed_ = true;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += bytes;
    return v;
  }
  void Skip(size_t n) { pos_ += n; }
  bool failed() const { return failed_ || pos_ > data_.size(); }

 private:
  absl::string_view data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

struct TrackDefaults {  // moov/mvex/trex
  uint32_t sample_duration = 0;
  uint32_t sample_flags = 0;
};

struct FragmentInfo {
  uint64_t base_media_decode_time = 0;
  uint32_t sample_count = 0;
  uint64_t duration = 0;  // sum of sample durations, track timescale
  uint32_t first_sample_flags = 0;
};

constexpr uint32_t kSampleIsNonSync = 0x00010000;

absl::StatusOr<TrackDefaults> ParseTrex(absl::string_view init) {
  absl::StatusOr<absl::string_view> trex = FindBox(init, {"moov", "mvex", "trex"});
  if (!trex.ok()) return trex.status();
  Reader r(*trex);
  r.Skip(4 + 4 + 4);  // version/flags, track_ID, default_sample_description_index
  TrackDefaults d;
  d.sample_duration = static_cast<uint32_t>(r.Read(4));
  r.Skip(4);  // default_sample_size
  d.sample_flags = static_cast<uint32_t>(r.Read(4));
  if (r.failed()) return absl::DataLossError("short trex");
  return d;
}

absl::StatusOr<uint32_t> ParseTimescale(absl::string_view init) {
  absl::StatusOr<absl::string_view> mdhd = FindBox(init, {"moov", "trak", "mdia", "mdhd"});
  if (!mdhd.ok()) return mdhd.status();
  Reader r(*mdhd);
  const auto version = r.Read(1);
  r.Skip(3);
  r.Skip(version == 1 ? 16 : 8);  // creation + modification time
  const auto timescale = static_cast<uint32_t>(r.Read(4));
  if (r.failed() || timescale == 0) return absl::DataLossError("bad mdhd");
  return timescale;
}

// tfdt, tfhd and trun of a moof's (single) traf, resolved against the trex defaults.
absl::StatusOr<FragmentInfo> ParseFragment(absl::string_view moof_body, const TrackDefaults& trex) {
  absl::StatusOr<absl::string_view> traf = FindBox(moof_body, {"traf"});
  if (!traf.ok()) return traf.status();
  absl::StatusOr<std::vector<Box>> children = ParseBoxes(*traf);
  if (!children.ok()) return children.status();

  FragmentInfo info;
  uint32_t default_duration = trex.sample_duration;
  uint32_t default_flags = trex.sample_flags;
  bool saw_tfdt = false, saw_trun = false;
  for (const Box& box : *children) {
    Reader r(box.body);
    const auto version = r.Read(1);
    const auto flags = static_cast<uint32_t>(r.Read(3));
    if (box.type == "tfhd") {
      r.Skip(4);                    // track_ID
      if (flags & 0x01) r.Skip(8);  // base_data_offset
      if (flags & 0x02) r.Skip(4);  // sample_description_index
      if (flags & 0x08) default_duration = static_cast<uint32_t>(r.Read(4));
      if (flags & 0x10) r.Skip(4);  // default_sample_size
      if (flags & 0x20) default_flags = static_cast<uint32_t>(r.Read(4));
    } else if (box.type == "tfdt") {
      info.base_media_decode_time = r.Read(version == 1 ? 8 : 4);
      saw_tfdt = true;
    } else if (box.type == "trun") {
      const auto count = static_cast<uint32_t>(r.Read(4));
      if (flags & 0x001) r.Skip(4);  // data_offset
      const bool has_first_flags = flags & 0x004;
      const uint32_t first_flags = has_first_flags ? static_cast<uint32_t>(r.Read(4)) : 0;
      for (uint32_t i = 0; i < count && !r.failed(); ++i) {
        const uint32_t duration =
            (flags & 0x100) ? static_cast<uint32_t>(r.Read(4)) : default_duration;
        if (flags & 0x200) r.Skip(4);  // size
        uint32_t sample_flags = (flags & 0x400) ? static_cast<uint32_t>(r.Read(4)) : default_flags;
        if (flags & 0x800) r.Skip(4);  // composition time offset
        if (i == 0 && has_first_flags) sample_flags = first_flags;
        if (info.sample_count == 0 && i == 0) info.first_sample_flags = sample_flags;
        info.duration += duration;
      }
      info.sample_count += count;
      saw_trun = true;
    }
    if (r.failed()) return absl::DataLossError(absl::StrCat("short ", box.type));
  }
  if (!saw_tfdt || !saw_trun) return absl::DataLossError("traf lacks tfdt or trun");
  return info;
}

// ---------------------------------------------------------------------------------------------
// fMP4 encoder.

EncoderOptions SmallOptions(EncoderPreset preset = EncoderPreset::kBalanced) {
  EncoderOptions o;
  o.width = 256;
  o.height = 144;
  o.fps = 16;
  o.preset = preset;
  o.crf = 23;
  return o;
}

struct EncodedStream {
  std::string init;
  std::vector<std::string> segments;
  std::vector<std::vector<RgbImage>> inputs;  // frames given to each segment
  std::string mime;
};

// Encodes segments of the given sizes from one continuous moving pattern.
EncodedStream EncodeStream(const EncoderOptions& options, const std::vector<int>& sizes) {
  EncodedStream stream;
  absl::StatusOr<std::unique_ptr<Fmp4Encoder>> encoder = Fmp4Encoder::Create(options);
  EXPECT_TRUE(encoder.ok()) << encoder.status();
  if (!encoder.ok()) return stream;
  stream.init = (*encoder)->init_segment();
  stream.mime = (*encoder)->mime_type();
  int next_frame = 0;
  for (int size : sizes) {
    std::vector<RgbImage> frames = MovingFrames(options.width, options.height, next_frame, size);
    next_frame += size;
    const std::vector<uint8_t> rgb = Concat(frames);
    absl::StatusOr<std::string> segment = (*encoder)->EncodeSegment(rgb.data(), size);
    EXPECT_TRUE(segment.ok()) << segment.status();
    if (!segment.ok()) return stream;
    stream.segments.push_back(*std::move(segment));
    stream.inputs.push_back(std::move(frames));
  }
  EXPECT_EQ((*encoder)->frames_encoded(), next_frame);
  return stream;
}

TEST(Fmp4Encoder, InitSegmentIsFtypThenMoovWithMvex) {
  absl::StatusOr<std::unique_ptr<Fmp4Encoder>> encoder = Fmp4Encoder::Create(SmallOptions());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::string& init = (*encoder)->init_segment();
  absl::StatusOr<std::vector<Box>> boxes = ParseBoxes(init);
  ASSERT_TRUE(boxes.ok()) << boxes.status();
  EXPECT_THAT(Types(*boxes), ::testing::ElementsAre("ftyp", "moov"));
  EXPECT_TRUE(FindBox(init, {"moov", "mvex", "trex"}).ok());
  // Empty moov: the sample table holds no samples (they live in the fragments).
  absl::StatusOr<absl::string_view> stsz =
      FindBox(init, {"moov", "trak", "mdia", "minf", "stbl", "stsz"});
  ASSERT_TRUE(stsz.ok()) << stsz.status();
  Reader r(*stsz);
  r.Skip(4 + 4);  // version/flags, sample_size
  EXPECT_EQ(r.Read(4), 0u);
  EXPECT_EQ((*encoder)->frames_encoded(), 0);
}

TEST(Fmp4Encoder, MimeTypeMatchesTheSpsInAvcC) {
  absl::StatusOr<std::unique_ptr<Fmp4Encoder>> encoder = Fmp4Encoder::Create(SmallOptions());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::string& mime = (*encoder)->mime_type();
  EXPECT_TRUE(std::regex_match(mime, std::regex(R"(video/mp4; codecs="avc1\.[0-9a-f]{6}")")))
      << mime;
  absl::StatusOr<absl::string_view> avcc = FindBox(
      (*encoder)->init_segment(), {"moov", "trak", "mdia", "minf", "stbl", "stsd", "avc1", "avcC"});
  ASSERT_TRUE(avcc.ok()) << avcc.status();
  ASSERT_GE(avcc->size(), 4u);
  char expected[7];
  std::snprintf(expected, sizeof(expected), "%02x%02x%02x", static_cast<uint8_t>((*avcc)[1]),
                static_cast<uint8_t>((*avcc)[2]), static_cast<uint8_t>((*avcc)[3]));
  EXPECT_EQ(mime, absl::StrCat("video/mp4; codecs=\"avc1.", expected, "\""));
}

TEST(Fmp4Encoder, SegmentsAreMoofMdatWithContinuousTfdt) {
  const std::vector<int> sizes = {5, 1, 8, 3};
  const EncodedStream stream = EncodeStream(SmallOptions(), sizes);
  ASSERT_EQ(stream.segments.size(), sizes.size());
  absl::StatusOr<TrackDefaults> trex = ParseTrex(stream.init);
  ASSERT_TRUE(trex.ok()) << trex.status();
  absl::StatusOr<uint32_t> timescale = ParseTimescale(stream.init);
  ASSERT_TRUE(timescale.ok()) << timescale.status();

  uint64_t elapsed = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    SCOPED_TRACE(absl::StrCat("segment ", k));
    absl::StatusOr<std::vector<Box>> boxes = ParseBoxes(stream.segments[k]);
    ASSERT_TRUE(boxes.ok()) << boxes.status();
    ASSERT_THAT(Types(*boxes), ::testing::ElementsAre("moof", "mdat"));
    absl::StatusOr<FragmentInfo> info = ParseFragment((*boxes)[0].body, *trex);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->sample_count, static_cast<uint32_t>(sizes[k]));
    EXPECT_EQ(info->base_media_decode_time, elapsed);
    EXPECT_EQ(info->first_sample_flags & kSampleIsNonSync, 0u)
        << "first sample is not a sync sample";
    // 16 fps: every frame lasts exactly timescale / 16 ticks.
    EXPECT_EQ(info->duration * 16, uint64_t{*timescale} * sizes[k]);
    elapsed += info->duration;
  }
}

TEST(Fmp4Encoder, EachSegmentDecodesAloneAfterInit) {
  const std::vector<int> sizes = {4, 1, 6};
  const EncodedStream stream = EncodeStream(SmallOptions(), sizes);
  ASSERT_EQ(stream.segments.size(), sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    SCOPED_TRACE(absl::StrCat("segment ", k));
    absl::StatusOr<DecodedVideo> video = DecodeVideo(stream.init + stream.segments[k]);
    ASSERT_TRUE(video.ok()) << video.status();
    EXPECT_EQ(video->codec_name, "h264");
    EXPECT_EQ(video->width, 256);
    EXPECT_EQ(video->height, 144);
    ASSERT_EQ(video->frames.size(), static_cast<size_t>(sizes[k]));
    ASSERT_EQ(video->key_frames.size(), video->frames.size());
    EXPECT_TRUE(video->key_frames[0]);
    for (size_t i = 0; i < video->frames.size(); ++i) {
      EXPECT_EQ(video->frames[i].width, 256);
      EXPECT_EQ(video->frames[i].height, 144);
      EXPECT_GT(PsnrOrDie(stream.inputs[k][i], video->frames[i]), 30.0) << "frame " << i;
    }
  }
}

TEST(Fmp4Encoder, WholeStreamDecodesCloseToInput) {
  const std::vector<int> sizes = {8, 8, 3};
  const EncodedStream stream = EncodeStream(SmallOptions(), sizes);
  ASSERT_EQ(stream.segments.size(), sizes.size());
  std::string file = stream.init;
  std::vector<RgbImage> inputs;
  for (size_t k = 0; k < sizes.size(); ++k) {
    file += stream.segments[k];
    inputs.insert(inputs.end(), stream.inputs[k].begin(), stream.inputs[k].end());
  }
  absl::StatusOr<DecodedVideo> video = DecodeVideo(file);
  ASSERT_TRUE(video.ok()) << video.status();
  ASSERT_EQ(video->frames.size(), inputs.size());
  EXPECT_NEAR(video->fps, 16.0, 0.01);
  // Segment starts are key frames (decode order == presentation order: no B-frames).
  EXPECT_TRUE(video->key_frames[0]);
  EXPECT_TRUE(video->key_frames[8]);
  EXPECT_TRUE(video->key_frames[16]);
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_GT(PsnrOrDie(inputs[i], video->frames[i]), 30.0) << "frame " << i;
  }
}

class Fmp4PresetTest : public ::testing::TestWithParam<EncoderPreset> {};

TEST_P(Fmp4PresetTest, EncodesDecodableStream) {
  const EncodedStream stream = EncodeStream(SmallOptions(GetParam()), {3, 2});
  ASSERT_EQ(stream.segments.size(), 2u);
  absl::StatusOr<DecodedVideo> video =
      DecodeVideo(stream.init + stream.segments[0] + stream.segments[1]);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->frames.size(), 5u);
}

INSTANTIATE_TEST_SUITE_P(AllPresets, Fmp4PresetTest,
                         ::testing::Values(EncoderPreset::kFast, EncoderPreset::kBalanced,
                                           EncoderPreset::kHigh));

// Widths that are not a multiple of the macroblock (x264 crops in the SPS) or of swscale's SIMD
// vector width (its row readers over-read; run under valgrind to see any read past the input).
TEST(Fmp4Encoder, OddSizedFramesRoundTrip) {
  EncoderOptions options = SmallOptions();
  options.width = 202;
  options.height = 98;
  const EncodedStream stream = EncodeStream(options, {2});
  ASSERT_EQ(stream.segments.size(), 1u);
  absl::StatusOr<DecodedVideo> video = DecodeVideo(stream.init + stream.segments[0]);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->width, 202);
  EXPECT_EQ(video->height, 98);
  ASSERT_EQ(video->frames.size(), 2u);
  EXPECT_GT(PsnrOrDie(stream.inputs[0][1], video->frames[1]), 30.0);
}

TEST(Fmp4Encoder, PresetNames) {
  EXPECT_STREQ(X264PresetName(EncoderPreset::kFast), "ultrafast");
  EXPECT_STREQ(X264PresetName(EncoderPreset::kBalanced), "veryfast");
  EXPECT_STREQ(X264PresetName(EncoderPreset::kHigh), "medium");
}

TEST(Fmp4Encoder, NonIntegerFrameRate) {
  EncoderOptions options = SmallOptions();
  options.fps = 29.97;
  const std::vector<int> sizes = {3, 4};
  const EncodedStream stream = EncodeStream(options, sizes);
  ASSERT_EQ(stream.segments.size(), 2u);
  absl::StatusOr<TrackDefaults> trex = ParseTrex(stream.init);
  ASSERT_TRUE(trex.ok()) << trex.status();
  absl::StatusOr<uint32_t> timescale = ParseTimescale(stream.init);
  ASSERT_TRUE(timescale.ok()) << timescale.status();
  uint64_t elapsed = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    absl::StatusOr<std::vector<Box>> boxes = ParseBoxes(stream.segments[k]);
    ASSERT_TRUE(boxes.ok()) << boxes.status();
    absl::StatusOr<FragmentInfo> info = ParseFragment((*boxes)[0].body, *trex);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->base_media_decode_time, elapsed);
    // Durations are exact in the track timescale: seconds per frame == 1 / 29.97.
    EXPECT_NEAR(static_cast<double>(info->duration) / *timescale, sizes[k] / 29.97, 1e-9);
    elapsed += info->duration;
  }
  absl::StatusOr<DecodedVideo> video =
      DecodeVideo(stream.init + stream.segments[0] + stream.segments[1]);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->frames.size(), 7u);
  EXPECT_NEAR(video->fps, 29.97, 0.01);
}

TEST(Fmp4Encoder, HdFrameSize) {
  EncoderOptions options;  // defaults: 1280x704, 16 fps, veryfast
  const EncodedStream stream = EncodeStream(options, {3});
  ASSERT_EQ(stream.segments.size(), 1u);
  absl::StatusOr<DecodedVideo> video = DecodeVideo(stream.init + stream.segments[0]);
  ASSERT_TRUE(video.ok()) << video.status();
  EXPECT_EQ(video->width, 1280);
  EXPECT_EQ(video->height, 704);
  ASSERT_EQ(video->frames.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(PsnrOrDie(stream.inputs[0][i], video->frames[i]), 30.0) << "frame " << i;
  }
}

TEST(Fmp4Encoder, RejectsBadOptionsNamingTheValue) {
  struct Case {
    void (*mutate)(EncoderOptions&);
    const char* message;
  };
  const Case cases[] = {
      {[](EncoderOptions& o) { o.width = 255; }, "width 255"},
      {[](EncoderOptions& o) { o.height = 143; }, "height 143"},
      {[](EncoderOptions& o) { o.width = 0; }, "width 0"},
      {[](EncoderOptions& o) { o.height = 9000; }, "height 9000"},
      {[](EncoderOptions& o) { o.fps = 0; }, "fps 0"},
      {[](EncoderOptions& o) { o.fps = 241; }, "fps 241"},
      {[](EncoderOptions& o) { o.fps = std::nan(""); }, "fps nan"},
      {[](EncoderOptions& o) { o.crf = -1; }, "crf -1"},
      {[](EncoderOptions& o) { o.crf = 52; }, "crf 52"},
      {[](EncoderOptions& o) { o.threads = -2; }, "threads -2"},
      {[](EncoderOptions& o) { o.preset = static_cast<EncoderPreset>(7); }, "preset 7"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    EncoderOptions options = SmallOptions();
    c.mutate(options);
    absl::StatusOr<std::unique_ptr<Fmp4Encoder>> encoder = Fmp4Encoder::Create(options);
    ASSERT_FALSE(encoder.ok());
    EXPECT_EQ(encoder.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(encoder.status().message()), HasSubstr(c.message));
  }
}

TEST(Fmp4Encoder, EncodeSegmentRejectsNoFrames) {
  absl::StatusOr<std::unique_ptr<Fmp4Encoder>> encoder = Fmp4Encoder::Create(SmallOptions());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<uint8_t> rgb = SmoothImage(256, 144).pixels;
  EXPECT_EQ((*encoder)->EncodeSegment(rgb.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*encoder)->EncodeSegment(nullptr, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Argument errors leave the encoder usable.
  EXPECT_TRUE((*encoder)->EncodeSegment(rgb.data(), 1).ok());
  EXPECT_EQ((*encoder)->frames_encoded(), 1);
}

// ---------------------------------------------------------------------------------------------
// Video decoder and PSNR.

TEST(VideoDecoder, RejectsEmptyAndGarbage) {
  absl::StatusOr<DecodedVideo> empty = DecodeVideo("");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  const RgbImage noise = NoiseImage(64, 64, 3);
  const std::string garbage(noise.pixels.begin(), noise.pixels.end());
  absl::StatusOr<DecodedVideo> video = DecodeVideo(garbage);
  ASSERT_FALSE(video.ok());
  EXPECT_EQ(video.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(video.status().message()), StartsWith("video: "));
}

TEST(Psnr, IdenticalIsInfinite) {
  const RgbImage a = SmoothImage(8, 8);
  EXPECT_EQ(PsnrOrDie(a, a), std::numeric_limits<double>::infinity());
}

TEST(Psnr, KnownValue) {
  RgbImage a{2, 1, {10, 20, 30, 40, 50, 60}};
  RgbImage b = a;
  b.pixels[4] += 6;  // one of six samples off by 6: MSE = 36 / 6 = 6
  EXPECT_NEAR(PsnrOrDie(a, b), 10 * std::log10(255.0 * 255.0 / 6.0), 1e-9);
}

TEST(Psnr, SizeMismatchIsInvalidArgument) {
  absl::StatusOr<double> psnr = Psnr(SmoothImage(8, 8), SmoothImage(8, 4));
  EXPECT_EQ(psnr.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wmserve::media
