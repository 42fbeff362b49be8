// csim_io.h -- binary array I/O between Python (codesign.hls.csim) and a
// C-simulation harness program.
//
// NOT SYNTHESIZABLE: testbench / driver code only. Never include it from a
// kernel header under include/codesign/.
//
// Wire format (all integers little-endian), identical in both directions:
//
//   stream  := magic record* terminator
//   magic   := "CSIO"                      (4 bytes)
//   record  := name_len:u32 name:bytes[name_len] dtype:u8 ndim:u32
//              dims:u64[ndim] data
//   terminator := name_len:u32 == 0
//   dtype   := 0 int64 | 1 float32 | 2 float64  (IEEE-754 bit patterns)
//   data    := prod(dims) elements in C (row-major) order; 0-d => 1 element
//
// Usage (one harness = one main()):
//
//   #include <ap_int.h>
//   #include "csim_io.h"
//   int main() {
//     csim::In in;                              // reads all of stdin
//     csim::Out out;                            // written when destroyed
//     const std::vector<long long>& x = in.i64("x");
//     std::vector<long long> y(x.size());
//     for (std::size_t i = 0; i < x.size(); ++i) {
//       ap_int<8> v = csim::fit_check<8, true>(x[i], "x");  // no silent wrap
//       y[i] = (v * 2).to_int64();
//     }
//     out.put_i64("y", in.shape("x"), y);
//     return 0;
//   }
//
// Any misuse (missing name, wrong dtype, value out of range, malformed
// stream, shape/size mismatch) prints "csim_io: ..." to stderr and exits
// with code 3 (csim::kExitUsage). Never print to stdout from a harness: stdout
// carries the output records. Use std::cerr / stderr for debugging.
#ifndef CODESIGN_CSIM_IO_H
#define CODESIGN_CSIM_IO_H

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace csim {

/// Exit status of every harness-side usage / protocol error.
constexpr int kExitUsage = 3;

/// Element type codes of the wire format.
enum class DType : std::uint8_t { I64 = 0, F32 = 1, F64 = 2 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::I64: return "int64";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
  }
  return "?";
}

/// Print "csim_io: <msg>" to stderr and exit(kExitUsage).
[[noreturn]] inline void fail(const std::string& msg) {
  std::fflush(stdout);
  std::fprintf(stderr, "csim_io: %s\n", msg.c_str());
  std::fflush(stderr);
  std::exit(kExitUsage);
}

/// One named array. Exactly one of i64 / f32 / f64 holds the data,
/// according to dtype; floats keep their exact bit patterns.
struct Array {
  DType dtype = DType::I64;
  std::vector<std::size_t> shape;  // empty => 0-d (one element)
  std::vector<long long> i64;
  std::vector<float> f32;
  std::vector<double> f64;

  std::size_t size() const {
    switch (dtype) {
      case DType::I64: return i64.size();
      case DType::F32: return f32.size();
      case DType::F64: return f64.size();
    }
    return 0;
  }
};

namespace detail {

inline const char* magic() { return "CSIO"; }

inline std::size_t shape_size(const std::vector<std::size_t>& shape) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  return n;
}

inline std::string shape_str(const std::vector<std::size_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  }
  s << ")";
  return s.str();
}

/// Bounds-checked little-endian cursor over the whole input stream.
class Reader {
 public:
  explicit Reader(const std::vector<unsigned char>& buf) : buf_(buf) {}

  void need(std::size_t n, const char* what) const {
    if (n > buf_.size() - pos_) {
      std::ostringstream s;
      s << "truncated input stream while reading " << what << " at byte " << pos_;
      fail(s.str());
    }
  }
  std::uint64_t uint(int nbytes, const char* what) {
    need(static_cast<std::size_t>(nbytes), what);
    std::uint64_t v = 0;
    for (int i = 0; i < nbytes; ++i) v |= static_cast<std::uint64_t>(buf_[pos_ + i]) << (8 * i);
    pos_ += static_cast<std::size_t>(nbytes);
    return v;
  }
  std::string bytes(std::size_t n, const char* what) {
    need(n, what);
    std::string s(reinterpret_cast<const char*>(buf_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  bool at_end() const { return pos_ == buf_.size(); }

 private:
  const std::vector<unsigned char>& buf_;
  std::size_t pos_ = 0;
};

inline void put_uint(std::string& out, std::uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

template <typename T, typename Bits>
inline T from_bits(Bits b) {
  static_assert(sizeof(T) == sizeof(Bits), "size mismatch");
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

template <typename Bits, typename T>
inline Bits to_bits(T v) {
  static_assert(sizeof(T) == sizeof(Bits), "size mismatch");
  Bits b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

}  // namespace detail

/// All input arrays, read from a stream (stdin by default) on construction.
class In {
 public:
  In() : In(stdin) {}

  explicit In(std::FILE* f) {
    std::vector<unsigned char> buf;
    unsigned char chunk[1 << 16];
    std::size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
    if (std::ferror(f)) fail("error reading the input stream");
    parse(buf);
  }

  bool has(const std::string& name) const { return arrays_.count(name) != 0; }

  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& kv : arrays_) v.push_back(kv.first);
    return v;
  }

  /// The raw record; fails if `name` was not sent.
  const Array& get(const std::string& name) const {
    auto it = arrays_.find(name);
    if (it == arrays_.end()) {
      std::string msg = "missing input '" + name + "' (inputs sent:";
      for (const auto& kv : arrays_) msg += " '" + kv.first + "'";
      if (arrays_.empty()) msg += " none";
      fail(msg + ")");
    }
    return it->second;
  }

  DType dtype(const std::string& name) const { return get(name).dtype; }
  const std::vector<std::size_t>& shape(const std::string& name) const { return get(name).shape; }
  std::size_t size(const std::string& name) const { return get(name).size(); }

  const std::vector<long long>& i64(const std::string& name) const { return typed(name, DType::I64).i64; }
  const std::vector<float>& f32(const std::string& name) const { return typed(name, DType::F32).f32; }
  const std::vector<double>& f64(const std::string& name) const { return typed(name, DType::F64).f64; }

  /// Single-element inputs (0-d or any shape with exactly one element).
  long long scalar_i64(const std::string& name) const { return scalar(name, DType::I64).i64[0]; }
  float scalar_f32(const std::string& name) const { return scalar(name, DType::F32).f32[0]; }
  double scalar_f64(const std::string& name) const { return scalar(name, DType::F64).f64[0]; }

 private:
  const Array& typed(const std::string& name, DType want) const {
    const Array& a = get(name);
    if (a.dtype != want) {
      fail("input '" + name + "' has dtype " + dtype_name(a.dtype) + ", harness expects " +
           dtype_name(want));
    }
    return a;
  }

  const Array& scalar(const std::string& name, DType want) const {
    const Array& a = typed(name, want);
    if (a.size() != 1) {
      fail("input '" + name + "' has shape " + detail::shape_str(a.shape) +
           ", harness expects a scalar (exactly one element)");
    }
    return a;
  }

  void parse(const std::vector<unsigned char>& buf) {
    detail::Reader r(buf);
    if (r.bytes(4, "magic") != detail::magic()) fail("input stream does not start with magic 'CSIO'");
    for (;;) {
      std::uint64_t name_len = r.uint(4, "name length");
      if (name_len == 0) break;
      std::string name = r.bytes(static_cast<std::size_t>(name_len), "name");
      if (arrays_.count(name)) fail("duplicate input '" + name + "'");
      Array a;
      std::uint64_t code = r.uint(1, "dtype");
      if (code > 2) fail("input '" + name + "': unknown dtype code " + std::to_string(code));
      a.dtype = static_cast<DType>(code);
      std::uint64_t ndim = r.uint(4, "ndim");
      std::uint64_t count = 1;
      for (std::uint64_t d = 0; d < ndim; ++d) {
        std::uint64_t dim = r.uint(8, "dims");
        a.shape.push_back(static_cast<std::size_t>(dim));
        count *= dim;
      }
      const std::size_t item = a.dtype == DType::F32 ? 4 : 8;
      if (count != 0 && count > (std::uint64_t(1) << 40) / item) fail("input '" + name + "' is too large");
      r.need(static_cast<std::size_t>(count) * item, "data");
      const std::size_t n = static_cast<std::size_t>(count);
      switch (a.dtype) {
        case DType::I64:
          a.i64.resize(n);
          for (std::size_t i = 0; i < n; ++i) a.i64[i] = detail::from_bits<long long>(r.uint(8, "data"));
          break;
        case DType::F32:
          a.f32.resize(n);
          for (std::size_t i = 0; i < n; ++i)
            a.f32[i] = detail::from_bits<float>(static_cast<std::uint32_t>(r.uint(4, "data")));
          break;
        case DType::F64:
          a.f64.resize(n);
          for (std::size_t i = 0; i < n; ++i) a.f64[i] = detail::from_bits<double>(r.uint(8, "data"));
          break;
      }
      arrays_.emplace(std::move(name), std::move(a));
    }
    if (!r.at_end()) fail("trailing bytes after the input terminator");
  }

  std::map<std::string, Array> arrays_;
};

/// Output arrays. Records are buffered and written to the stream (stdout by
/// default) by finish(), which the destructor calls if it was not called.
class Out {
 public:
  Out() : Out(stdout) {}
  explicit Out(std::FILE* f) : f_(f) { buf_.append(detail::magic(), 4); }
  Out(const Out&) = delete;
  Out& operator=(const Out&) = delete;
  ~Out() {
    if (!done_) finish();
  }

  /// Integer output. T may be any integer type, or a type with an explicit
  /// conversion to long long (e.g. ap_int<W> with W <= 64).
  template <typename T>
  void put_i64(const std::string& name, const std::vector<std::size_t>& shape, const std::vector<T>& data) {
    header(name, DType::I64, shape, data.size());
    for (std::size_t i = 0; i < data.size(); ++i) {
      check_unsigned_range(name, i, data[i], std::is_unsigned<T>());
      detail::put_uint(buf_, detail::to_bits<std::uint64_t>(static_cast<long long>(data[i])), 8);
    }
  }

  void put_f32(const std::string& name, const std::vector<std::size_t>& shape, const std::vector<float>& data) {
    header(name, DType::F32, shape, data.size());
    for (float v : data) detail::put_uint(buf_, detail::to_bits<std::uint32_t>(v), 4);
  }

  void put_f64(const std::string& name, const std::vector<std::size_t>& shape, const std::vector<double>& data) {
    header(name, DType::F64, shape, data.size());
    for (double v : data) detail::put_uint(buf_, detail::to_bits<std::uint64_t>(v), 8);
  }

  /// 0-d outputs.
  void put_scalar_i64(const std::string& name, long long v) { put_i64(name, {}, std::vector<long long>{v}); }
  void put_scalar_f32(const std::string& name, float v) { put_f32(name, {}, std::vector<float>{v}); }
  void put_scalar_f64(const std::string& name, double v) { put_f64(name, {}, std::vector<double>{v}); }

  /// Echo an input record unchanged (any dtype) under `name`.
  void put(const std::string& name, const Array& a) {
    switch (a.dtype) {
      case DType::I64: put_i64(name, a.shape, a.i64); break;
      case DType::F32: put_f32(name, a.shape, a.f32); break;
      case DType::F64: put_f64(name, a.shape, a.f64); break;
    }
  }

  /// Write all records and the terminator, then flush. Idempotent.
  void finish() {
    if (done_) return;
    done_ = true;
    detail::put_uint(buf_, 0, 4);
    if (std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size() || std::fflush(f_) != 0) {
      fail("error writing the output stream");
    }
  }

 private:
  void header(const std::string& name, DType dtype, const std::vector<std::size_t>& shape, std::size_t n) {
    if (done_) fail("output '" + name + "' written after finish()");
    if (name.empty()) fail("output names must be non-empty");
    if (!names_.insert(name).second) fail("duplicate output '" + name + "'");
    if (detail::shape_size(shape) != n) {
      fail("output '" + name + "': shape " + detail::shape_str(shape) + " has " +
           std::to_string(detail::shape_size(shape)) + " elements but " + std::to_string(n) + " were given");
    }
    detail::put_uint(buf_, name.size(), 4);
    buf_.append(name);
    detail::put_uint(buf_, static_cast<std::uint8_t>(dtype), 1);
    detail::put_uint(buf_, shape.size(), 4);
    for (std::size_t d : shape) detail::put_uint(buf_, d, 8);
  }

  template <typename T>
  static void check_unsigned_range(const std::string& name, std::size_t i, const T& v, std::true_type) {
    if (static_cast<unsigned long long>(v) > 0x7FFFFFFFFFFFFFFFULL) {
      fail("output '" + name + "'[" + std::to_string(i) + "] = " + std::to_string(static_cast<unsigned long long>(v)) +
           " does not fit in int64");
    }
  }
  template <typename T>
  static void check_unsigned_range(const std::string&, std::size_t, const T&, std::false_type) {}

  std::FILE* f_;
  std::string buf_;
  std::set<std::string> names_;
  bool done_ = false;
};

/// Value range of ap_int<W> (SIGNED) / ap_uint<W>, clipped to int64 (the
/// transport type): ap_uint<W> with W >= 63 reports [0, 2^63 - 1].
template <int W, bool SIGNED>
struct IntRange {
  static_assert(W >= 1, "IntRange: W must be >= 1");
  // Clamped shift amount: no instantiation ever shifts by >= 64 bits.
  static constexpr int kS = W < 64 ? W : 63;
  static constexpr long long lo() {
    return !SIGNED ? 0 : W >= 64 ? -0x7FFFFFFFFFFFFFFFLL - 1 : -static_cast<long long>(1ULL << (kS - 1));
  }
  static constexpr long long hi() {
    return SIGNED ? (W >= 64 ? 0x7FFFFFFFFFFFFFFFLL : static_cast<long long>((1ULL << (kS - 1)) - 1))
                  : (W >= 63 ? 0x7FFFFFFFFFFFFFFFLL : static_cast<long long>((1ULL << kS) - 1));
  }
  static constexpr bool contains(long long v) { return lo() <= v && v <= hi(); }
};

namespace detail {
template <int W, bool SIGNED>
[[noreturn]] inline void fit_fail(long long v, const std::string& what) {
  std::ostringstream s;
  s << "fit_check failed for " << what << ": value " << v << " does not fit in " << (SIGNED ? "ap_int<" : "ap_uint<")
    << W << "> (range [" << IntRange<W, SIGNED>::lo() << ", " << IntRange<W, SIGNED>::hi() << "])";
  fail(s.str());
}
}  // namespace detail

/// Return v if it fits in a W-bit integer of the given signedness (the value
/// range of ap_int<W> / ap_uint<W>), else fail() naming `what`. Use it before
/// every int64 -> ap_int<W>/ap_uint<W> assignment: ap_int assignment wraps
/// silently, which would hide test bugs.
///   ap_int<8> a = csim::fit_check<8, true>(x[i], "x");
template <int W, bool SIGNED>
inline long long fit_check(long long v, const char* what) {
  if (!IntRange<W, SIGNED>::contains(v)) detail::fit_fail<W, SIGNED>(v, what);
  return v;
}

/// fit_check every element of a vector; the message names what[index].
template <int W, bool SIGNED>
inline const std::vector<long long>& fit_check_all(const std::vector<long long>& v, const char* what) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!IntRange<W, SIGNED>::contains(v[i])) {
      detail::fit_fail<W, SIGNED>(v[i], std::string(what) + "[" + std::to_string(i) + "]");
    }
  }
  return v;
}

}  // namespace csim

#endif  // CODESIGN_CSIM_IO_H
