/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_FETCH_H
#define DS_SPOOL_FETCH_H

/*
 * Reading messages back for delivery, inside the server: by location (the
 * commit record's segment and offset, from spool_txn_location() or
 * spool_recover_queue()), not by a scan. One struct spool_fetch per worker
 * (single-threaded); it keeps up to maps_max segments of any lane mapped
 * read-only and shared (MAP_SHARED: it sees what the lanes write), least
 * recently used unmapped first, never one a message in progress holds.
 *
 * The body is read sequentially (dlv_client's read() asks for increasing
 * offsets; a step back restarts the chunk walk from the first chunk). The
 * body CRC of the commit record is checked as the body is read: the last
 * bytes are never handed out when it does not match (-EBADMSG instead), so
 * a damaged body never reaches a next hop's final dot.
 *
 * Page faults on a mapping read the disk on this thread: the segments a
 * worker delivers from are almost always the ones it just wrote (in the
 * page cache); a cold backlog after a restart pays for it (noted in
 * deliver/README.md).
 */

#include <stddef.h>
#include <stdint.h>

#include "spool_reader.h" /* struct spool_msg */

struct spool_fetch;

/* Handle on one message being read. Owned by the caller; opaque bookkeeping. */
struct spool_fetch_msg {
	struct spool_msg m; /* id, size, env (strings valid until spool_fetch_put) ... */
	uint64_t priv[12];
};

/*
 * maps_max: 2 .. 65536 (-EINVAL). A message in progress holds at most two
 * maps at a time (its commit's segment, where the envelope strings point,
 * and the segment its read position is in), so maps_max / 2 messages can
 * always be in progress at once, each of any number of segments.
 */
int spool_fetch_open(struct spool_fetch **out, const char *dir, unsigned maps_max);
/* Every message must have been put back. */
void spool_fetch_close(struct spool_fetch *f);

/*
 * Decode the commit record of message id at (lane, seq, off): 0, -ENOENT
 * (no such segment, or no commit record of id there: e.g. reclaimed),
 * -EBADMSG (record damaged), -EMFILE (maps_max segments held by messages
 * in progress), -errno from open/mmap.
 */
int spool_fetch_get(struct spool_fetch *f, unsigned lane, uint64_t seq, uint64_t off, uint64_t id,
		    struct spool_fetch_msg *out);

/*
 * Copy up to cap body octets at body offset off into buf: the count (> 0),
 * 0 at the end (off == m.size), -EBADMSG (a chunk missing, or the body CRC
 * does not match: reported instead of the last bytes), -EINVAL (off past
 * the end, cap 0), -EMFILE (no map free for the next segment; the read
 * may be repeated later), -errno. Reads at increasing offsets continue
 * where the last one ended; an offset before the current chunk walks from
 * the first chunk again.
 */
int spool_fetch_read(struct spool_fetch *f, struct spool_fetch_msg *fm, uint64_t off, void *buf, size_t cap);

/* Done with the message: its segments may be unmapped. A no-op for a handle get failed on. */
void spool_fetch_put(struct spool_fetch *f, struct spool_fetch_msg *fm);

#endif
