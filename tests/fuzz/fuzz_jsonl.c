/* The CLI's JSON-lines event reader (client/jsonl.c): any line is either refused with a
 * reason or parsed into an event that protobuf-c packs and decodes back unchanged, the
 * way `eddy ingest` sends it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Eddy__V1__Event *ev = NULL;
    struct jsonl_error why;
    eddy_err err = jsonl_parse_event((const char *)data, size, &ev, &why);
    if (err != EDDY_OK) {
        /* a refusal always says why, and leaves nothing allocated */
        if (ev || (err == EDDY_ERR_INVALID && why.reason[0] == '\0'))
            abort();
        return 0;
    }
    size_t n = eddy__v1__event__get_packed_size(ev);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        abort();
    eddy__v1__event__pack(ev, buf);
    Eddy__V1__Event *back = eddy__v1__event__unpack(NULL, n, buf);
    if (!back || strcmp(back->user_id, ev->user_id) != 0 ||
        back->timestamp_ms != ev->timestamp_ms || back->n_metadata != ev->n_metadata)
        abort();
    (void)jsonl_event_type_name(ev->event_type);
    eddy__v1__event__free_unpacked(back, NULL);
    free(buf);
    jsonl_event_free(ev);
    return 0;
}
