# syntax=docker/dockerfile:1
# One image for both `earpiece operator` and the injected `earpiece proxy` sidecar:
#   docker build -t earpiece:0.1.0 .
# The Node.js version is the one package.json pins for development and tests.

FROM node:24.21.0-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: compiling needs only TypeScript, and the `node` devDependency's script would
# download a second Node.js.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY cmd ./cmd
COPY src ./src
RUN npm run build

FROM node:24.21.0-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only (so never the `node` runtime package, a devDependency); none of them
# needs an install script.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24.21.0-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/package.json ./package.json
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The distroless "nonroot" uid, which the chart's securityContext and the injected sidecar expect.
USER 65532:65532
# proxy: chat 8095, metrics and probes 9464; operator: webhook 9443, metrics 8080, probes 8081.
EXPOSE 8095 9464 9443 8080 8081
# A young generation of 16 MB semi-spaces (without the flag, Node sizes it from the container's memory
# limit: 1 MB under 256Mi), which the process gives back once start-up is done, and after a load that grew RSS
# by 32 MiB once no turn has been open for 30 s (src/runtime/heap.ts, hence --expose-gc): an idle sidecar takes
# 81 to 83 MB, one that took a burst of 1,000 streams about 150 MB (300 without), and under load it scavenges
# less often than with 2 MB.
# WebAssembly stays on its baseline compiler: optimizing the SQL parser (libpg-query) on its first use took
# 550 MB for a moment, past the sidecar's 256Mi limit.
# npm run bench starts the proxy with the same flags; docs/benchmark.md shows the trade-offs.
ENTRYPOINT ["node", "--max-semi-space-size=16", "--expose-gc", "--liftoff-only", "dist/cmd/earpiece.js"]
CMD ["--help"]
