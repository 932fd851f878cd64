// Loaded before fauxqs (`node --import`): makes a FIFO receive hand out up to ten messages of
// one message group, in order, as SQS does. fauxqs gives at most one message per group per
// receive, so in the channel_account ordering scope (a whole business number is one group)
// every invocation got a single record: the fault runs measured that limit, not the processor.
//
// Three things change, all by wrapping fauxqs's own methods:
// - a receive serves the groups oldest waiting message first. fauxqs keeps its groups in the
//   order they last appeared: a group emptied by a receive and refilled by a message that came
//   back (a retry, a crash) went to the back, behind every other group's backlog, and in the
//   conversation scope a retried conversation waited minutes for its next attempt. SQS
//   documents no order across groups; oldest first is what the harness assumes, so that the
//   stall it measures is the retry delay and not this emulator's queueing order;
// - a receive that opened a group (nothing of it was in flight before) asks fauxqs again for
//   that group only, until the receive is full or the group has nothing more to give;
// - when messages of a group come back (visibility set to 0, or run out), fauxqs puts each at
//   the front of its group, one by one, which reverses several; the group is put back in
//   sequence order afterwards.
import { SqsQueue } from "./node_modules/fauxqs/dist/sqs/sqsStore.js";

const bySequence = (a, b) =>
  a.sequenceNumber < b.sequenceNumber ? -1 : a.sequenceNumber > b.sequenceNumber ? 1 : 0;

const headSequence = (msgs) => msgs[0]?.sequenceNumber ?? "~";

const dequeueFifo = SqsQueue.prototype.dequeueFifo;
SqsQueue.prototype.dequeueFifo = function (maxCount, visibilityTimeout, dlqResolver) {
  const limit = Math.min(maxCount, 10);
  // Oldest waiting message first (sequence numbers are zero-padded: text order is age order).
  const groups = [...this.fifoMessages].sort(([, a], [, b]) => {
    const x = headSequence(a);
    const y = headSequence(b);
    return x < y ? -1 : x > y ? 1 : 0;
  });
  this.fifoMessages.clear();
  for (const [g, msgs] of groups) this.fifoMessages.set(g, msgs);
  const out = dequeueFifo.call(this, limit, visibilityTimeout, dlqResolver);
  const groupOf = (m) => this.inflightMessages.get(m.ReceiptHandle)?.message.messageGroupId;
  const taken = new Map();
  for (const m of out) {
    const g = groupOf(m);
    taken.set(g, (taken.get(g) ?? 0) + 1);
  }
  // Opened by this receive: everything of the group in flight was taken just now.
  let open = [...taken.keys()].filter(
    (g) => g !== undefined && this.fifoLockedGroups.get(g) === taken.get(g),
  );
  while (out.length < limit && open.length > 0) {
    // Every other group locked one more time, the open ones unlocked: fauxqs then takes the
    // next message of each open group only.
    const held = new Map();
    for (const g of this.fifoMessages.keys()) {
      if (!open.includes(g)) {
        this.fifoLockedGroups.set(g, (this.fifoLockedGroups.get(g) ?? 0) + 1);
        held.set(g, true);
      }
    }
    const before = new Map(open.map((g) => [g, this.fifoLockedGroups.get(g) ?? 0]));
    for (const g of open) this.fifoLockedGroups.delete(g);
    const more = dequeueFifo.call(this, limit - out.length, visibilityTimeout, dlqResolver);
    // Undo: the extra lock of the held groups, and the open groups' earlier count added to
    // what fauxqs counted for them now.
    for (const g of held.keys()) {
      const n = (this.fifoLockedGroups.get(g) ?? 1) - 1;
      if (n <= 0) this.fifoLockedGroups.delete(g);
      else this.fifoLockedGroups.set(g, n);
    }
    for (const [g, n] of before) {
      const now = (this.fifoLockedGroups.get(g) ?? 0) + n;
      if (now <= 0) this.fifoLockedGroups.delete(g);
      else this.fifoLockedGroups.set(g, now);
    }
    const gave = new Set(more.map(groupOf));
    out.push(...more);
    open = open.filter((g) => gave.has(g));
  }
  return out;
};

const changeVisibility = SqsQueue.prototype.changeVisibility;
SqsQueue.prototype.changeVisibility = function (receiptHandle, timeoutSeconds) {
  const group =
    this.isFifo() && timeoutSeconds === 0
      ? this.inflightMessages.get(receiptHandle)?.message.messageGroupId
      : undefined;
  changeVisibility.call(this, receiptHandle, timeoutSeconds);
  if (group !== undefined) this.fifoMessages.get(group)?.sort(bySequence);
};

const processTimers = SqsQueue.prototype.processTimers;
SqsQueue.prototype.processTimers = function () {
  // A little ahead of fauxqs's own clock read, so no expiring message is missed. One pass
  // over what is in flight, as fauxqs's own method makes: cheaper than looking at every
  // group afterwards (in the conversation scope there are far more groups than messages in
  // flight).
  const soon = Date.now() + 1000;
  const groups = new Set();
  if (this.isFifo()) {
    for (const entry of this.inflightMessages.values()) {
      if (entry.visibilityDeadline <= soon) groups.add(entry.message.messageGroupId);
    }
  }
  processTimers.call(this);
  for (const g of groups) this.fifoMessages.get(g)?.sort(bySequence);
};
