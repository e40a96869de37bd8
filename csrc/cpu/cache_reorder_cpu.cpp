// janus_fast::reorder_caches_: the rows of a beam search's key/value caches reordered in place, new row
// i = old row index[i] over the first `length` positions (janus_fast.model.LayerCache.reorder is the
// reference: an index_select of the filled positions, then their copy back).
//
// A beam search keeps each sentence's rows among its own beams, so the rows fall into small blocks
// that read only themselves. Each block is done on its own (in parallel): the rows of the block that
// another row reads and that are themselves replaced are copied to a per-thread buffer (a few rows:
// it stays in cache), then every replaced row is written once. Rows kept in place are not touched.
// The memory traffic is one read and one write of the replaced rows, where the reference reads and
// writes every row twice. An index that reads rows of an earlier block (not a beam reorder) makes
// one block of everything: still correct, with a larger buffer.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/decoder_passes.h"

namespace janus_fast {
namespace cpu {
namespace {

// Destination rows [begin, end): each reads rows inside the block, or rows past every destination
// (never written).
struct Block {
  int64_t begin, end;
};

std::vector<Block> blocks_of(const int64_t* index, int64_t rows) {
  std::vector<Block> blocks;
  int64_t begin = 0, reach = -1;
  for (int64_t i = 0; i < rows; ++i) {
    if (index[i] < begin) return {{0, rows}};  // reads a row an earlier block may have replaced
    reach = std::max(reach, index[i]);
    if (reach <= i) {  // rows begin..i read only rows begin..i
      blocks.push_back({begin, i + 1});
      begin = i + 1;
    }
  }
  if (begin < rows) blocks.push_back({begin, rows});  // reads rows past the destinations too
  return blocks;
}

// One block of one cache (rows, heads, capacity, head_dim): `segment` = length * head_dim floats per
// (row, head) at stride capacity * head_dim.
void reorder_block(float* data, int64_t heads, int64_t head_stride, int64_t segment, const int64_t* index,
                   const Block& block, std::vector<float>& buffer, std::vector<int64_t>& slot) {
  const int64_t row_stride = heads * head_stride, begin = block.begin, end = block.end;
  // the rows of the block that are replaced and read by another row: into the buffer
  slot.assign(end - begin, -1);
  int64_t stashed = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t source = index[i];
    if (source != i && source < end && index[source] != source && slot[source - begin] < 0)
      slot[source - begin] = stashed++;
  }
  if (stashed) {
    buffer.resize(stashed * heads * segment);
    for (int64_t j = begin; j < end; ++j)
      if (slot[j - begin] >= 0)
        for (int64_t h = 0; h < heads; ++h)
          std::memcpy(buffer.data() + (slot[j - begin] * heads + h) * segment, data + j * row_stride + h * head_stride,
                      segment * sizeof(float));
  }
  for (int64_t i = begin; i < end; ++i) {
    const int64_t source = index[i];
    if (source == i) continue;
    const bool from_buffer = source < end && slot[source - begin] >= 0;
    for (int64_t h = 0; h < heads; ++h) {
      const float* from = from_buffer ? buffer.data() + (slot[source - begin] * heads + h) * segment
                                      : data + source * row_stride + h * head_stride;
      std::memcpy(data + i * row_stride + h * head_stride, from, segment * sizeof(float));
    }
  }
}

void reorder_caches(at::TensorList caches, const at::Tensor& index, int64_t length) {
  const char* op = "reorder_caches_";
  TORCH_CHECK_VALUE(index.dim() == 1 && index.scalar_type() == at::kLong && index.device().is_cpu(), op,
                    ": index must be int64 (R',) on the CPU, got ", index.sizes());
  const at::Tensor rows_index = index.contiguous();
  const int64_t* order = rows_index.data_ptr<int64_t>();
  const int64_t kept = rows_index.size(0);
  for (const at::Tensor& cache : caches) {
    TORCH_CHECK_VALUE(cache.dim() == 4 && cache.scalar_type() == at::kFloat && cache.is_contiguous() &&
                          cache.device().is_cpu(),
                      op, ": caches must be contiguous float32 (R, H, capacity, head_dim) on the CPU, got ",
                      cache.sizes());
    TORCH_CHECK_VALUE(cache.size(0) == caches[0].size(0), op, ": every cache must have ", caches[0].size(0),
                      " rows, got ", cache.size(0));
    TORCH_CHECK_VALUE(length >= 0 && length <= cache.size(2), op, ": length ", length, " outside [0, ",
                      cache.size(2), "]");
  }
  // each cache its own memory: a tensor given twice, or two views of one storage, would be reordered
  // twice (and written by two threads at once)
  for (size_t a = 0; a < caches.size(); ++a)
    for (size_t b = a + 1; b < caches.size(); ++b)
      TORCH_CHECK_VALUE(!caches[a].storage().is_alias_of(caches[b].storage()), op, ": caches ", a, " and ", b,
                        " share memory; each cache must be a tensor of its own");
  const int64_t rows = caches.empty() ? 0 : caches[0].size(0);
  TORCH_CHECK_VALUE(kept <= rows, op, ": ", kept, " rows kept of ", rows);
  for (int64_t i = 0; i < kept; ++i)
    TORCH_CHECK_VALUE(order[i] >= 0 && order[i] < rows, op, ": index ", order[i], " outside [0, ", rows, ")");
  if (caches.empty() || kept == 0 || length == 0) return;
  const std::vector<Block> blocks = blocks_of(order, kept);
  const int64_t count = static_cast<int64_t>(caches.size()), units = count * static_cast<int64_t>(blocks.size());
  at::parallel_for(0, units, 1, [&](int64_t first, int64_t last) {
    thread_local std::vector<float> buffer;
    thread_local std::vector<int64_t> slot;
    for (int64_t u = first; u < last; ++u) {
      const at::Tensor& cache = caches[u % count];
      const int64_t head_stride = cache.size(2) * cache.size(3);
      reorder_block(cache.data_ptr<float>(), cache.size(1), head_stride, length * cache.size(3), order,
                    blocks[u / count], buffer, slot);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus_fast, m) {
  m.def("reorder_caches_(Tensor(a!)[] caches, Tensor index, int length) -> ()");
}

TORCH_LIBRARY_IMPL(janus_fast, CPU, m) { m.impl("reorder_caches_", &reorder_caches); }

// Nothing to compute for shapes: the op writes its caches in place.
TORCH_LIBRARY_IMPL(janus_fast, Meta, m) {
  m.impl("reorder_caches_", [](at::TensorList, const at::Tensor&, int64_t) {});
}

}  // namespace cpu
}  // namespace janus_fast
