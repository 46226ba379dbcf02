/** Time comes through a Clock, so tests decide what "now" is (condition times, lease expiry). */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
