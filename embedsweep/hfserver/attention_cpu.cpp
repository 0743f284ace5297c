// Attention for long inputs on an x86 CPU with AVX-512: bfloat16 or float32 q, k, v in, float32
// arithmetic.
//
// Each query row's valid keys are one contiguous range: the row's sequence occupies positions
// [start, end) of the padded batch (left or right padding), and a causal row i sees
// [start, min(i + 1, end)). So no (rows x keys) mask is ever built, and a causal row skips the
// keys after it. Per (batch, KV head) the keys are copied once to float32 along the head
// dimension (16 keys per vector: a query element times 16 keys' scores per FMA); bfloat16 values
// are unpacked to float32 rows (16 output dimensions per FMA), float32 ones read in place.
// float32 FMAs, not vdpbf16ps: on the CPU measured (an Intel Xeon with AVX-512 BF16 and FP16, no
// AMX), vdpbf16ps issued ~1.3 G/s a core against ~5.3 G/s for a 512-bit float32 FMA, so two FMAs
// beat one bf16 dot pair by ~2x (benchmarks/bench_attention_kernel.py prints both). The copies
// take B x Hk x N x D x 8 bytes (bfloat16 in) or x 4 (float32 in) while the call runs. Softmax
// runs per block of keys with the online rescale, exp2 by a degree-6 polynomial and scalef;
// probabilities stay float32. Rows outside their sequence get zeros.
//
// Built at first use by embedsweep.hfserver.attention (torch.utils.cpp_extension) and run on
// torch's own OpenMP threads (at::parallel_for).

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

inline __m512 exp2_ps(__m512 x) {
  // 2^x for x <= 0: 2^floor(x) * 2^frac(x), the fraction by its Taylor polynomial.
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, whole);
  __m512 p = _mm512_set1_ps(1.540353e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, whole);
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

}  // namespace

// q: [B, H, N, D]; k, v: [B, Hk, N, D] (bfloat16 or float32, one dtype, contiguous); ranges:
// [B, 2] int32 (start, end) of each sequence. Returns [B, N, H, D] in q's dtype, the layout
// transformers reshapes to [B, N, H*D]. T is the element: uint16_t (bfloat16 bits) or float.
template <typename T, int64_t C>
void rows(const T* qd, const float* kp, const float* vp, const int32_t* rd, T* od, int64_t B,
          int64_t H, int64_t Hk, int64_t N, int64_t D, bool causal, float scale2);

inline float widen(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

inline float widen(float value) { return value; }

inline void store16(uint16_t* to, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), (__m256i)_mm512_cvtneps_pbh(x));
}

inline void store16(float* to, __m512 x) { _mm512_storeu_ps(to, x); }

template <typename T>
const T* elements(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) {
    return t.data_ptr<float>();
  } else {
    return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
  }
}

template <typename T>
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor ranges,
                     bool causal, double scale);

torch::Tensor attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor ranges,
                        bool causal, double scale) {
  const auto type = q.scalar_type();
  TORCH_CHECK((type == at::kBFloat16 || type == at::kFloat) && k.scalar_type() == type &&
                  v.scalar_type() == type,
              "bfloat16 or float32 q, k, v (one dtype) expected");
  if (type == at::kFloat) return attend<float>(q, k, v, ranges, causal, scale);
  return attend<uint16_t>(q, k, v, ranges, causal, scale);
}

template <typename T>
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor ranges,
                     bool causal, double scale) {
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  auto range = ranges.to(at::kInt).contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const int64_t Hk = k.size(1);
  TORCH_CHECK(D % 16 == 0 && D <= 512, "head size must be a multiple of 16, at most 512");
  TORCH_CHECK(H % Hk == 0 && k.size(2) == N && v.size(2) == N, "shapes do not match");
  const int64_t chunks = D / 16;
  // Keys transposed ([D][N + 32]: two vectors past the last key), values as rows ([N][D]).
  const int64_t Nk = N + 32;
  // float32 values are read in place; bfloat16 ones are unpacked.
  constexpr bool wide_in = std::is_same_v<T, float>;
  std::vector<float> kp(static_cast<size_t>(B * Hk * D * Nk), 0.0f);
  std::vector<float> vp(wide_in ? 0 : static_cast<size_t>(B * Hk * N * D));
  const T* kd = elements<T>(k);
  const T* vd = elements<T>(v);
  at::parallel_for(0, B * Hk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const T* ks = kd + bh * N * D;
      float* kt = kp.data() + bh * D * Nk;
      for (int64_t j = 0; j < N; ++j) {
        for (int64_t d = 0; d < D; ++d) kt[d * Nk + j] = widen(ks[j * D + d]);
      }
      if constexpr (wide_in) continue;
      const T* vs = vd + bh * N * D;
      float* vt = vp.data() + bh * N * D;
      for (int64_t x = 0; x < N * D; x += 16) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vs + x));
        const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16);
        _mm512_storeu_ps(vt + x, _mm512_castsi512_ps(wide));
      }
    }
  });
  auto out = torch::zeros({B, N, H, D}, q.options());
  const T* qd = elements<T>(q);
  T* od = const_cast<T*>(elements<T>(out));
  const int32_t* rd = range.data_ptr<int32_t>();
  const float scale2 = static_cast<float>(scale) * 1.4426950408889634f;  // log2(e)
  const float* kpd = kp.data();
  const float* vpd = nullptr;
  if constexpr (wide_in) {
    vpd = vd;
  } else {
    vpd = vp.data();
  }
  switch (chunks) {
#define EMBEDSWEEP_ROWS(n) \
  case n:                  \
    rows<T, n>(qd, kpd, vpd, rd, od, B, H, Hk, N, D, causal, scale2); \
    break;
    EMBEDSWEEP_ROWS(1)
    EMBEDSWEEP_ROWS(2)
    EMBEDSWEEP_ROWS(3)
    EMBEDSWEEP_ROWS(4)
    EMBEDSWEEP_ROWS(5)
    EMBEDSWEEP_ROWS(6)
    EMBEDSWEEP_ROWS(7)
    EMBEDSWEEP_ROWS(8)
#undef EMBEDSWEEP_ROWS
    default:
      rows<T, 0>(qd, kpd, vpd, rd, od, B, H, Hk, N, D, causal, scale2);
  }
  return out;
}

inline __mmask16 key_lanes(int64_t j, int64_t lo, int64_t hi) {
  // Lanes of keys j .. j + 15 inside [lo, hi).
  if (j >= hi) return 0;
  __mmask16 lanes = first_lanes(hi - j);
  if (j < lo) lanes &= static_cast<__mmask16>(~((1u << (lo - j)) - 1u));
  return lanes;
}

template <int64_t R, int64_t C>
inline void weigh(const float* probs, int64_t stride, const float* values, int64_t D, int64_t keys,
                  float* const held[R], const float alpha[R], int64_t n) {
  // HELD[r] (row r's output so far) = HELD[r] * ALPHA[r] + sum over KEYS of p_rj * v_j, for the
  // first N rows. C > 0: the R x C accumulators are a local array, so they stay in registers
  // (through a pointer the compiler stored and reloaded them at every key: a store-forwarding
  // chain that halved the kernel's speed); C == 0 (any head size, R == 1) loops over chunks.
  if constexpr (C == 0) {
    for (int64_t c = 0; c < D / 16; ++c) {
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(held[0] + c * 16), _mm512_set1_ps(alpha[0]));
      for (int64_t j = 0; j < keys; ++j) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(values + j * D + c * 16),
                              _mm512_set1_ps(probs[j]), acc);
      }
      if (n > 0) _mm512_storeu_ps(held[0] + c * 16, acc);
    }
  } else {
    __m512 acc[R * C];
    for (int64_t r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(alpha[r]);
      for (int64_t c = 0; c < C; ++c) {
        acc[r * C + c] = _mm512_mul_ps(_mm512_loadu_ps(held[r] + c * 16), scale);
      }
    }
    for (int64_t j = 0; j < keys; ++j) {
      __m512 weights[R];
      for (int64_t r = 0; r < R; ++r) weights[r] = _mm512_set1_ps(probs[r * stride + j]);
      for (int64_t c = 0; c < C; ++c) {
        const __m512 v = _mm512_loadu_ps(values + j * D + c * 16);
        for (int64_t r = 0; r < R; ++r) acc[r * C + c] = _mm512_fmadd_ps(v, weights[r], acc[r * C + c]);
      }
    }
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(held[r] + c * 16, acc[r * C + c]);
    }
  }
}

template <typename T, int64_t C>
void rows(const T* qd, const float* kp, const float* vp, const int32_t* rd, T* od, int64_t B,
          int64_t H, int64_t Hk, int64_t N, int64_t D, bool causal, float scale2) {
  // C: output vectors of 16 dimensions (D / 16), fixed for the common sizes so the
  // accumulators stay in registers; 0: any size. A task is QB query rows of one head; it walks
  // the keys in blocks of KB (keys and values of a block stay in L1 while every row of the task
  // uses them), R rows at a time (each load of keys or values serves R rows; R x C
  // accumulators, at least 8 independent FMA chains where the registers allow), with the online
  // softmax: a row's running maximum, sum and output are rescaled when the maximum grows.
  constexpr int64_t R = C == 0 ? 1 : (C == 1 ? 8 : (C <= 4 ? 4 : (C <= 8 ? 2 : 1)));
  constexpr int64_t QB = 32;
  const int64_t chunks = D / 16;
  const int64_t Nk = N + 32;
  const int64_t KB = std::max<int64_t>(32, (4096 / D) / 32 * 32);
  const int64_t group = H / Hk;
  const int64_t blocks = (N + QB - 1) / QB;
  // Tasks are handed out one at a time from a shared counter, not split evenly up front: a
  // thread the OS takes away for a while (the server tokenizing the next requests on the same
  // cores) then costs the call its share of that time, not the whole of it, and causal blocks of
  // unequal cost even out. Within a (batch, head) the last query block (the most keys) goes
  // first, so the cheap ones are left for the end; both threads read the same keys meanwhile.
  const int64_t tasks = B * H * blocks;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const int64_t stride = KB + 48;
    std::vector<float> scores(static_cast<size_t>(R * stride));
    std::vector<float> probs(static_cast<size_t>(R * stride), 0.0f);
    std::vector<float> outs(static_cast<size_t>(QB * D));
    std::vector<float> queries(static_cast<size_t>(QB * D));
    float top[QB], total[QB];
    for (int64_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) {
      const int64_t b = task / (H * blocks), h = (task / blocks) % H;
      const int64_t rb = blocks - 1 - task % blocks;
      const int64_t start = rd[b * 2], stop = rd[b * 2 + 1];
      const int64_t first = std::max(rb * QB, start);
      const int64_t after = std::min(std::min(N, (rb + 1) * QB), stop);
      if (first >= after) continue;  // padding rows only: zeros
      const int64_t hk = h / group;
      const float* kt = kp + (b * Hk + hk) * D * Nk;
      const float* vt = vp + (b * Hk + hk) * N * D;
      const int64_t rows_n = after - first;
      for (int64_t r = 0; r < rows_n; ++r) {
        top[r] = -INFINITY;
        total[r] = 0.0f;
        // The task's query rows in float32, the softmax scale (base 2) folded in.
        const T* qs = qd + ((b * H + h) * N + first + r) * D;
        for (int64_t d = 0; d < D; ++d) queries[r * D + d] = widen(qs[d]) * scale2;
      }
      std::fill(outs.begin(), outs.begin() + rows_n * D, 0.0f);
      const int64_t key_end = causal ? std::min(after, stop) : stop;
      for (int64_t kb0 = start; kb0 < key_end; kb0 += KB) {
        const int64_t kb1 = std::min(kb0 + KB, key_end);
        for (int64_t g = 0; g < rows_n; g += R) {
          const int64_t n = std::min<int64_t>(R, rows_n - g);
          int64_t hi[R];
          const float* qrow[R];
          for (int64_t r = 0; r < R; ++r) {
            const int64_t i = first + g + std::min(r, n - 1);
            const int64_t last = causal ? std::min<int64_t>(i + 1, stop) : stop;
            hi[r] = r < n ? std::min(kb1, last) : kb0;  // this block's keys end for row r
            qrow[r] = queries.data() + (g + std::min(r, n - 1)) * D;
          }
          int64_t block_end = kb0;
          for (int64_t r = 0; r < R; ++r) block_end = std::max(block_end, hi[r]);
          if (block_end <= kb0) continue;  // causal rows before this block
          __m512 most[R];
          for (int64_t r = 0; r < R; ++r) most[r] = _mm512_set1_ps(-INFINITY);
          // Scores (base 2), 32 keys a step: 2R independent sums.
          for (int64_t j = kb0; j < block_end; j += 32) {
            __m512 s[2 * R];
            for (int64_t a = 0; a < 2 * R; ++a) s[a] = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; ++d) {
              const __m512 lo = _mm512_loadu_ps(kt + d * Nk + j);
              const __m512 up = _mm512_loadu_ps(kt + d * Nk + j + 16);
              for (int64_t r = 0; r < R; ++r) {
                const __m512 query = _mm512_set1_ps(qrow[r][d]);
                s[2 * r] = _mm512_fmadd_ps(lo, query, s[2 * r]);
                s[2 * r + 1] = _mm512_fmadd_ps(up, query, s[2 * r + 1]);
              }
            }
            for (int64_t r = 0; r < R; ++r) {
              for (int64_t half = 0; half < 2; ++half) {
                const int64_t at = j + 16 * half;
                _mm512_storeu_ps(scores.data() + r * stride + (at - kb0), s[2 * r + half]);
                most[r] = _mm512_mask_max_ps(most[r], key_lanes(at, start, hi[r]), most[r],
                                             s[2 * r + half]);
              }
            }
          }
          // Probabilities against the new running maximum; the old sum and output rescaled.
          float alpha[R];
          const int64_t width = block_end - kb0;
          for (int64_t r = 0; r < R; ++r) {
            float* row = probs.data() + r * stride;
            if (r >= n || hi[r] <= kb0) {
              std::fill(row, row + width, 0.0f);
              alpha[r] = 1.0f;
              continue;
            }
            const int64_t q = g + r;
            const float grown = std::max(top[q], _mm512_reduce_max_ps(most[r]));
            alpha[r] = std::exp2(top[q] - grown);
            top[q] = grown;
            const __m512 shift = _mm512_set1_ps(grown);
            __m512 sum = _mm512_setzero_ps();
            for (int64_t j = kb0; j < block_end; j += 16) {
              const __mmask16 lanes = key_lanes(j, start, hi[r]);
              const __m512 x = _mm512_loadu_ps(scores.data() + r * stride + (j - kb0));
              const __m512 e = _mm512_maskz_mov_ps(lanes, exp2_ps(_mm512_sub_ps(x, shift)));
              sum = _mm512_add_ps(sum, e);
              _mm512_storeu_ps(row + (j - kb0), e);
            }
            total[q] = total[q] * alpha[r] + _mm512_reduce_add_ps(sum);
          }
          // Output += p_j * v_j over the block's keys, 16 dimensions a step.
          float* held[R];
          for (int64_t r = 0; r < R; ++r) held[r] = outs.data() + (g + std::min(r, n - 1)) * D;
          weigh<R, C>(probs.data(), stride, vt + kb0 * D, D, block_end - kb0, held, alpha, n);
        }
      }
      for (int64_t r = 0; r < rows_n; ++r) {
        const __m512 inv = _mm512_set1_ps(1.0f / total[r]);
        const float* held = outs.data() + r * D;
        T* orow = od + ((b * N + first + r) * H + h) * D;
        for (int64_t c = 0; c < chunks; ++c) {
          store16(orow + c * 16, _mm512_mul_ps(_mm512_loadu_ps(held + c * 16), inv));
        }
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention", &attention, "range-masked bfloat16 or float32 attention (AVX-512)",
        py::call_guard<py::gil_scoped_release>());
}
