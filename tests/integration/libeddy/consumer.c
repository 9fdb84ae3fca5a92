/* An application of libeddy built only from the installed copy (`pkg-config --cflags --libs
 * eddy`), as test_libeddy_install.py compiles it: ingest three events for one user, then
 * print the recommendation count and the user's profile as the node answers them.
 *   consumer ENDPOINT USER */
#include <eddy/client.h>

#include <stdio.h>
#include <time.h>

int main(int argc, char **argv)
{
    int rc = 1;
    eddy_options *opts = NULL;
    eddy_client *c = NULL;
    Eddy__V1__IngestResponse *ing = NULL;
    Eddy__V1__RecommendResponse *rec = NULL;
    Eddy__V1__GetUserProfileResponse *prof = NULL;
    eddy_error err = {0};

    if (argc != 3) {
        fprintf(stderr, "usage: consumer ENDPOINT USER\n");
        return 2;
    }
    opts = eddy_options_new();
    if (!opts)
        goto out;
    eddy_options_set_timeout_ms(opts, 10000);
    c = eddy_client_new(argv[1], opts);
    if (!c)
        goto out;

    struct timespec now;
    timespec_get(&now, TIME_UTC);
    int64_t t = (int64_t)now.tv_sec * 1000 - 10000; /* a few seconds ago */
    static const char *ids[] = {"lib-0", "lib-1", "lib-2"};
    static const char *products[] = {"p-lib-a", "p-lib-b", "p-lib-a"};
    static const Eddy__V1__EventType types[] = {EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW,
                                                EDDY__V1__EVENT_TYPE__EVENT_TYPE_VIEW,
                                                EDDY__V1__EVENT_TYPE__EVENT_TYPE_PURCHASE};
    Eddy__V1__Event ev[3];
    Eddy__V1__Event *evp[3];
    for (int i = 0; i < 3; i++) {
        eddy__v1__event__init(&ev[i]);
        ev[i].event_id = (char *)ids[i];
        ev[i].user_id = argv[2];
        ev[i].timestamp_ms = t + i;
        ev[i].event_type = types[i];
        ev[i].product_id = (char *)products[i];
        ev[i].category = "tools";
        evp[i] = &ev[i];
    }
    if (eddy_ingest(c, evp, 3, &ing, &err) != EDDY_STATUS_OK)
        goto fail;
    printf("ingest: accepted=%u duplicates=%u rejected=%zu\n", ing->accepted, ing->duplicates,
           ing->n_rejected);

    Eddy__V1__RecommendRequest req = EDDY__V1__RECOMMEND_REQUEST__INIT;
    req.user_id = argv[2];
    req.max_recommendations = 5;
    if (eddy_recommend(c, &req, &rec, &err) != EDDY_STATUS_OK)
        goto fail;
    printf("recommend: items=%zu cold_start=%d\n", rec->n_items, rec->cold_start);

    if (eddy_get_profile(c, argv[2], &prof, &err) != EDDY_STATUS_OK)
        goto fail;
    printf("profile: user=%s events=%llu purchases=%zu\n", prof->profile->user_id,
           (unsigned long long)prof->profile->event_count, prof->profile->n_recent_purchases);
    rc = 0;
    goto out;

fail:
    fprintf(stderr, "consumer: %s: %s\n", eddy_status_name(err.code), err.message);
out:
    eddy_response_free(prof);
    eddy_response_free(rec);
    eddy_response_free(ing);
    eddy_client_free(c);
    eddy_options_free(opts);
    return rc;
}
