// The BullMQ side of `make bench-peers`: the same end-to-end workload as simplebank's
// bench_worker and bench_producer.
//
// `node bench.mjs worker`: a Worker (concurrency BENCH_CONCURRENCY, default 100) whose
// processor is a no-op that records how long after its send each job started; prints `ready`
// once connected, closes itself after BENCH_STOP_AT jobs and writes BENCH_LATENCY_FILE (first
// line: the last processor start in µs since the epoch, the count and the process's CPU
// seconds; then one latency in µs a line).
// `node bench.mjs produce`: adds BENCH_TASKS jobs, BENCH_PRODUCE=single (50 concurrent
// producers, one `add` at a time each) or batch (`addBulk` of 1,000).
// Jobs are added with removeOnComplete and removeOnFail, so that, as in simplebank, a
// finished job leaves nothing in Redis. Both read REDIS_HOST, REDIS_PORT and BENCH_QUEUE.
import { Queue, Worker } from 'bullmq';
import { writeFileSync } from 'node:fs';

const connection = {
  host: process.env.REDIS_HOST ?? '127.0.0.1',
  port: Number(process.env.REDIS_PORT ?? 6379),
  maxRetriesPerRequest: null,
};
const queueName = process.env.BENCH_QUEUE ?? 'peer-bullmq';
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const jobOpts = { removeOnComplete: true, removeOnFail: true };

async function worker() {
  const stopAt = Number(process.env.BENCH_STOP_AT ?? 100000);
  const out = process.env.BENCH_LATENCY_FILE;
  if (!out) throw new Error('BENCH_LATENCY_FILE is not set');
  const latencies = [];
  let lastUs = 0;
  let closing = null;
  const w = new Worker(
    queueName,
    async (job) => {
      const started = nowUs();
      latencies.push(Math.max(0, started - job.data.sent_us));
      lastUs = Math.max(lastUs, started);
      if (latencies.length === stopAt && !closing) {
        closing = setImmediate(() => w.close());
      }
    },
    { connection, concurrency: Number(process.env.BENCH_CONCURRENCY ?? 100) },
  );
  await w.waitUntilReady();
  process.stdout.write('ready\n');
  await new Promise((resolve) => w.on('closed', resolve));
  const cpu = process.cpuUsage();
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  writeFileSync(out, `${lastUs} ${latencies.length} ${cpuSeconds}\n${latencies.join('\n')}\n`);
}

async function produce() {
  const tasks = Number(process.env.BENCH_TASKS ?? 100000);
  const queue = new Queue(queueName, { connection });
  const mode = process.env.BENCH_PRODUCE ?? 'single';
  if (mode === 'single') {
    let next = 0;
    const producer = async () => {
      while (next++ < tasks) {
        await queue.add('ping', { sent_us: nowUs() }, jobOpts);
      }
    };
    await Promise.all(Array.from({ length: 50 }, producer));
  } else if (mode === 'batch') {
    for (let done = 0; done < tasks; ) {
      const n = Math.min(1000, tasks - done);
      const sent_us = nowUs();
      await queue.addBulk(
        Array.from({ length: n }, () => ({ name: 'ping', data: { sent_us }, opts: jobOpts })),
      );
      done += n;
    }
  } else {
    throw new Error(`BENCH_PRODUCE must be single or batch, not ${mode}`);
  }
  await queue.close();
}

const mode = process.argv[2];
if (mode === 'worker') await worker();
else if (mode === 'produce') await produce();
else throw new Error('usage: node bench.mjs worker|produce');
process.exit(0);
