// Stand-in for the CUDA decode attention in builds without the CUDA backend. A CUDA context cannot
// exist in such a build, so this only runs if that invariant breaks; it fails cleanly anyway.
#include "decode_attention.hpp"

namespace llmn {

void decode_attention_cuda(const Context&, const DecodeAttentionArgs&) {
    fail(LLMN_STATUS_UNSUPPORTED,
         "llmn_decode_attention on a CUDA context needs the CUDA backend; this build has none (LLMNATIVE_CUDA=OFF)");
}

}  // namespace llmn
